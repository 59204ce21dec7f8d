"""FastAPI test app: uvicorn tests.apps.fastapi_app:app"""

import asyncio

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from tests.apps.common import STREAM_CHUNKS, STREAM_PAUSE_S, AsgiTiming, call_path, downstream

api = FastAPI()


@api.get("/users/{user_id}")
async def user(user_id: int):
    return {"id": user_id, "name": f"user{user_id}"}


@api.post("/orders", status_code=201)
async def orders(request: Request):
    return JSONResponse({"created": True, "order": await request.json()}, status_code=201,
                        headers={"X-Order-Status": "accepted"})


@api.get("/customers/{cid}/orders/{oid}")
async def customer_order(cid: str, oid: int):
    return {"customer": cid, "order": oid}


@api.get("/teams/{team}/members/{member}")
async def team_member(team: str, member: str):
    return {"team": team, "member": member}


@api.get("/boom")
async def boom():
    raise RuntimeError("boom")


@api.get("/call")
async def call(request: Request):
    async with httpx.AsyncClient() as client:
        r = await client.get(downstream() + call_path(request.query_params), timeout=5)
    return JSONResponse({"downstream": r.json()}, status_code=r.status_code)


@api.get("/stream")
async def stream():
    async def chunks():
        for i in range(STREAM_CHUNKS):
            yield f"chunk {i}\n"
            await asyncio.sleep(STREAM_PAUSE_S)
    return StreamingResponse(chunks(), media_type="text/plain")


app = AsgiTiming(api)
