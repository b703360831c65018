"""The server's lifecycle, in one place. Health, readiness and admission all
read it from here (Registry.phase), and only the app moves it forward:

    STARTING  listening, models loading: calls get UNAVAILABLE, health NOT_SERVING
    SERVING   health SERVING
    DRAINING  after SIGTERM: health NOT_SERVING so balancers move away; calls still answered
    STOPPING  new calls refused with UNAVAILABLE; accepted ones finish
"""

STARTING, SERVING, DRAINING, STOPPING = "STARTING", "SERVING", "DRAINING", "STOPPING"
