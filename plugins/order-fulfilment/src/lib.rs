//! The order-fulfilment reactor: a small process manager. Orders live in
//! streams `order-{id}`. Once an order is both placed (`OrderPlaced`) and
//! paid (`PaymentReceived`), in either order, it appends one
//! `ShipmentRequested` to `shipment-{id}`,
//! `{"orderId":"…","customerId":"…" or null}`, expecting a new stream.
//!
//! State: `order/{id}` → `{"placed":…,"paid":…,"customerId":…,"requested":…}`,
//! which `query` answers for an order id. The same reactor as
//! `plugins/python/order-fulfilment` and `plugins/js/order-fulfilment`,
//! byte for byte.

use eventfold_sdk::{Error, Event, ExpectedVersion, Output, Reactor, State, Subscription};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Order {
    placed: bool,
    paid: bool,
    customer_id: Option<String>,
    requested: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ShipmentRequested<'a> {
    order_id: &'a str,
    customer_id: Option<&'a str>,
}

struct OrderFulfilment;

impl Reactor for OrderFulfilment {
    fn subscription() -> Subscription {
        Subscription::categories(["order"]).event_types(["OrderPlaced", "PaymentReceived"])
    }

    fn apply(event: &Event, state: &mut State, output: &mut Output) -> eventfold_sdk::Result<()> {
        let Value::Object(data) = event.decode::<Value>()? else {
            return Err(Error::msg("data must be a JSON object"));
        };
        let order_id = event.stream.strip_prefix("order-").unwrap_or(event.stream);
        let key = format!("order/{order_id}");
        let mut order: Order = state.get(&key)?.unwrap_or_default();
        match event.event_type {
            "OrderPlaced" => {
                order.placed = true;
                order.customer_id = data.get("customerId").and_then(Value::as_str).map(str::to_owned);
            }
            "PaymentReceived" => order.paid = true,
            other => return Err(Error::msg(format!("unknown event type {other:?}"))),
        }
        // Placed and paid: request the shipment, once.
        if order.placed && order.paid && !order.requested {
            let shipment = ShipmentRequested { order_id, customer_id: order.customer_id.as_deref() };
            let stream = format!("shipment-{order_id}");
            output.append(&stream, "ShipmentRequested", &shipment, ExpectedVersion::NoStream)?;
            order.requested = true;
        }
        state.put(&key, &order);
        Ok(())
    }

    fn query(request: &[u8], state: &mut State) -> eventfold_sdk::Result<Vec<u8>> {
        // The request is an order id; the answer its state, or `null`.
        let order_id = std::str::from_utf8(request)
            .map_err(|_| Error::msg("the request must be an order id, in UTF-8"))?;
        let stored = state.get_bytes(&format!("order/{order_id}"));
        Ok(stored.unwrap_or_else(|| b"null".to_vec()))
    }
}

eventfold_sdk::export_reactor!(OrderFulfilment);
