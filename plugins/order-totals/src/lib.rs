//! Per-customer order totals. State: `customer/{id}` → `{"orders", "total"}`.
//! Query `{"top": n}` answers the n customers with the largest totals.

use eventfold_sdk::{Error, Event, Projection, State, Subscription};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct OrderPlaced {
    #[serde(rename = "customerId")]
    customer_id: String,
    amount: f64,
}

#[derive(Serialize, Deserialize, Default)]
struct Totals {
    orders: u64,
    total: f64,
}

#[derive(Deserialize)]
struct TopQuery {
    top: usize,
}

struct OrderTotals;

impl Projection for OrderTotals {
    fn subscription() -> Subscription {
        Subscription::categories(["order"]).event_types(["OrderPlaced"])
    }

    fn apply(event: &Event, state: &mut State) -> eventfold_sdk::Result<()> {
        let order: OrderPlaced = event.decode()?;
        state.update(&format!("customer/{}", order.customer_id), |t: &mut Totals| {
            t.orders += 1;
            t.total += order.amount;
        })
    }

    fn query(request: &[u8], state: &mut State) -> eventfold_sdk::Result<Vec<u8>> {
        let query: TopQuery = serde_json::from_slice(request).map_err(|e| Error::msg(format!("expected {{\"top\": n}}: {e}")))?;
        let mut customers: Vec<(String, Totals)> = state
            .scan("customer/")
            .map(|(key, value)| Ok((key["customer/".len()..].to_owned(), serde_json::from_slice(&value)?)))
            .collect::<eventfold_sdk::Result<_>>()?;
        customers.sort_by(|a, b| b.1.total.total_cmp(&a.1.total));
        customers.truncate(query.top);
        let answer: Vec<_> = customers
            .into_iter()
            .map(|(id, t)| serde_json::json!({"customer": id, "orders": t.orders, "total": t.total}))
            .collect();
        Ok(serde_json::to_vec(&answer)?)
    }
}

eventfold_sdk::export_projection!(OrderTotals);
