"""The reference for bench/api_load.py: a bare Litestar route returning a constant
top-10-shaped JSON body, served the same way as the product's API."""

from litestar import Litestar, get

BODY = {
    "user_id": "196",
    "model_version": "als-000000000000",
    "source": "personal",
    "items": [
        {"item_id": str(n), "score": 0.5, "title": f"A movie title ({1990 + n})"} for n in range(10)
    ],
}


@get("/users/{user_id:str}/recommendations", sync_to_thread=False)
def constant(user_id: str) -> dict:
    return BODY


app = Litestar(route_handlers=[constant], openapi_config=None)
