"""The order-fulfilment reactor in Python: a small process manager.

Orders live in streams ``order-{id}``. Once an order is both placed
(``OrderPlaced``) and paid (``PaymentReceived``), in either order, it appends
one ``ShipmentRequested`` to ``shipment-{id}``:
``{"orderId":"...","customerId":"..." or null}``, expecting a new stream.

State: ``order/{id}`` → ``{"placed":..,"paid":..,"customerId":..,"requested":..}``,
which ``query`` answers for an order id. The same reactor as the Rust
``plugins/order-fulfilment`` and the JavaScript one, byte for byte.
"""

import json

from componentize_py_types import Err
from wit_world import WitWorld as Reactor
from wit_world.imports import append, state, types


def encode(value) -> bytes:
    """JSON as serde_json writes it: compact, UTF-8."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def encode_order(order: dict) -> bytes:
    """An order's state, its keys always in this order."""
    return encode(
        {
            "placed": order["placed"],
            "paid": order["paid"],
            "customerId": order["customerId"],
            "requested": order["requested"],
        }
    )


class WitWorld(Reactor):
    def describe(self) -> types.PluginInfo:
        return types.PluginInfo(
            kind=types.PluginKind.REACTOR,
            subscription=types.Subscription(
                categories=["order"], event_types=["OrderPlaced", "PaymentReceived"]
            ),
            version="0.1.0",
            # The whole batch as one JSON array: one json.loads per batch.
            encoding=types.EventEncoding.JSON,
        )

    def handle(self, events: types.Events) -> None:
        if not isinstance(events, types.Events_Json):
            raise Err(types.HandleError(index=0, message="expected a JSON batch"))
        # Orders are cached for the batch (reads see the batch's own changes)
        # and encoded and handed to the host once per key at the end.
        orders: dict[str, dict] = {}
        batch = json.loads(events.value)
        for index, (position, stream, _, event_type, _, data, _, _) in enumerate(batch):
            try:
                if not isinstance(data, dict):
                    raise ValueError("data must be a JSON object")
                order_id = stream.removeprefix("order-")
                key = f"order/{order_id}"
                order = orders.get(key)
                if order is None:
                    stored = state.get(key)
                    order = (
                        json.loads(stored)
                        if stored is not None
                        else {"placed": False, "paid": False, "customerId": None, "requested": False}
                    )
                    orders[key] = order
                if event_type == "OrderPlaced":
                    order["placed"] = True
                    customer_id = data.get("customerId")
                    order["customerId"] = customer_id if isinstance(customer_id, str) else None
                elif event_type == "PaymentReceived":
                    order["paid"] = True
                else:
                    raise ValueError(f"unknown event type {event_type!r}")
                # Placed and paid: request the shipment, once.
                if order["placed"] and order["paid"] and not order["requested"]:
                    shipment = {"orderId": order_id, "customerId": order["customerId"]}
                    append.append(
                        position,
                        f"shipment-{order_id}",
                        "ShipmentRequested",
                        encode(shipment),
                        b"{}",
                        append.ExpectedVersion_NoStream(),
                    )
                    order["requested"] = True
            except Exception as error:
                message = f"{type(error).__name__}: {error}"
                raise Err(types.HandleError(index=index, message=message))
        for key, order in orders.items():
            state.set(key, encode_order(order))

    def query(self, request: bytes) -> bytes:
        # The request is an order id; the answer its state, or `null`.
        try:
            order_id = request.decode()
        except UnicodeDecodeError:
            raise Err("the request must be an order id, in UTF-8")
        stored = state.get(f"order/{order_id}")
        return stored if stored is not None else b"null"
