//! One notification per shipped order, on channel `webhook`. Orders live in
//! streams `order-{id}`; the customer comes from the order's `OrderPlaced`,
//! remembered in state (`order/{id}`) until the order ships. And one per
//! shipment requested (`ShipmentRequested` on `shipment-{id}`, which the
//! `order-fulfilment` reactor appends once an order is placed and paid).

use eventfold_sdk::{Event, Notifier, Outbox, State, Subscription};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(tag = "type", content = "data")]
enum OrderEvent {
    OrderPlaced {
        #[serde(rename = "customerId")]
        customer_id: String,
    },
    OrderShipped {
        carrier: Option<String>,
    },
    ShipmentRequested {
        #[serde(rename = "orderId")]
        order_id: String,
        #[serde(rename = "customerId")]
        customer_id: Option<String>,
    },
}

#[derive(Serialize, Deserialize)]
struct Order {
    customer_id: String,
}

#[derive(Serialize)]
struct Shipped<'a> {
    #[serde(rename = "orderId")]
    order_id: &'a str,
    #[serde(rename = "customerId")]
    customer_id: &'a str,
    carrier: Option<String>,
}

#[derive(Serialize)]
struct Requested<'a> {
    #[serde(rename = "orderId")]
    order_id: &'a str,
    #[serde(rename = "customerId")]
    customer_id: Option<&'a str>,
}

struct ShipmentNotifier;

impl Notifier for ShipmentNotifier {
    fn subscription() -> Subscription {
        Subscription::categories(["order", "shipment"]).event_types([
            "OrderPlaced",
            "OrderShipped",
            "ShipmentRequested",
        ])
    }

    fn apply(event: &Event, state: &mut State, outbox: &mut Outbox) -> eventfold_sdk::Result<()> {
        let order_id = event.stream.strip_prefix("order-").unwrap_or(event.stream);
        let key = format!("order/{order_id}");
        match event.decode_tagged::<OrderEvent>()? {
            OrderEvent::OrderPlaced { customer_id } => state.put(&key, &Order { customer_id }),
            OrderEvent::OrderShipped { carrier } => {
                let customer_id = state.get::<Order>(&key)?.map(|o| o.customer_id).unwrap_or_default();
                let shipped = Shipped { order_id, customer_id: &customer_id, carrier };
                outbox.emit("webhook", &format!("order-{order_id}-shipped"), &shipped)?;
                state.delete(&key);
            }
            OrderEvent::ShipmentRequested { order_id, customer_id } => {
                let requested = Requested { order_id: &order_id, customer_id: customer_id.as_deref() };
                outbox.emit("webhook", &format!("order-{order_id}-shipment-requested"), &requested)?;
            }
        }
        Ok(())
    }
}

eventfold_sdk::export_notifier!(ShipmentNotifier);
