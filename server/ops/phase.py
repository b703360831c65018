"""The server's lifecycle, in one place. Health, readiness and admission all
read it from the process's one Phase, and only the app moves it forward:

    STARTING  listening, models loading: calls get UNAVAILABLE, health NOT_SERVING
    SERVING   health SERVING
    DRAINING  after SIGTERM: health NOT_SERVING so balancers move away; calls still answered
    STOPPING  new calls refused with UNAVAILABLE; accepted ones finish
"""

STARTING, SERVING, DRAINING, STOPPING = "STARTING", "SERVING", "DRAINING", "STOPPING"


class Phase:
    def __init__(self):
        self.current = STARTING
        self.crashed: BaseException | None = None  # a batcher died: not ready, not live

    @property
    def ready(self) -> bool:
        return self.current == SERVING and self.crashed is None

    @property
    def live(self) -> bool:
        return self.crashed is None
