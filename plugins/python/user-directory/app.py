"""The classic example in Python: a directory of users.

State: ``user/{id}`` → ``{"name": ...}``; a deleted user is removed. The same
projection as the Rust ``plugins/user-directory``, byte for byte.
"""

import json

from componentize_py_types import Err
from wit_world import WitWorld as Projection
from wit_world.imports import state, types


def encode(value) -> bytes:
    """JSON as serde_json writes it: compact, UTF-8."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


class WitWorld(Projection):
    def describe(self) -> types.PluginInfo:
        return types.PluginInfo(
            kind=types.PluginKind.PROJECTION,
            subscription=types.Subscription(categories=["user"], event_types=[]),
            version="0.1.0",
            # The whole batch as one JSON array: one json.loads per batch.
            encoding=types.EventEncoding.JSON,
        )

    def handle(self, events: types.Events) -> None:
        if not isinstance(events, types.Events_Json):
            raise Err(types.HandleError(index=0, message="expected a JSON batch"))
        # Writes are cached for the batch (the latest name per user) and
        # encoded and handed to the host once per key: host calls and
        # encoding, not the fold, are what a plugin pays for per event.
        writes: dict[str, str | None] = {}
        batch = json.loads(events.value)
        for index, (_, _, _, event_type, _, data, _, _) in enumerate(batch):
            try:
                key = f"user/{int(data['userId'])}"
                if event_type == "UserCreated" or event_type == "UserNameUpdated":
                    name = data["name"]
                    if not isinstance(name, str):
                        raise ValueError("name must be a string")
                    writes[key] = name
                elif event_type == "UserDeleted":
                    writes[key] = None
                else:
                    raise ValueError(f"unknown event type {event_type!r}")
            except Exception as error:
                message = f"{type(error).__name__}: {error}"
                raise Err(types.HandleError(index=index, message=message))
        for key, value in writes.items():
            if value is None:
                state.delete(key)
            else:
                state.set(key, encode({"name": value}))

    def query(self, request: bytes) -> bytes:
        raise Err("this plugin answers no queries")
