use std::time::Instant;
#[tokio::main]
async fn main() {
    let url = std::env::args().nth(1).unwrap();
    let c = reqwest::Client::new();
    let body = serde_json::json!({"expected_version":"any","events":[{"type":"T","data":{"x":"y".repeat(150)}}]});
    for round in 0..2 {
        for what in ["health", "read", "append"] {
            let mut xs = Vec::new();
            for _ in 0..3000 {
                let t = Instant::now();
                let r = match what {
                    "health" => c.get(format!("{url}/health")).send().await.unwrap(),
                    "read" => c
                        .get(format!("{url}/streams/s-1?limit=1"))
                        .send()
                        .await
                        .unwrap(),
                    _ => c
                        .post(format!("{url}/streams/s-1"))
                        .json(&body)
                        .send()
                        .await
                        .unwrap(),
                };
                let _ = r.bytes().await.unwrap();
                xs.push(t.elapsed().as_micros());
            }
            xs.sort();
            println!(
                "round {round} {what:7} p50 {} us p10 {} us",
                xs[xs.len() / 2],
                xs[xs.len() / 10]
            );
        }
    }
}
