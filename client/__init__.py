"""camserve's thin client: Client, AsyncClient and the Explanation they return."""

from .client import AsyncClient, Client
from .messages import Explanation, Prediction

__all__ = ["AsyncClient", "Client", "Explanation", "Prediction"]
