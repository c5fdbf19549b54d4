//! A function built with the official `lambda_runtime` crate, run unmodified by
//! Nimbus's `provided.al2023` runtime in the end-to-end tests.

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::{Value, json};

async fn handle(event: LambdaEvent<Value>) -> Result<Value, Error> {
    if event.payload.get("fail").is_some() {
        return Err("asked to fail".into());
    }
    Ok(json!({
        "rust": true,
        "event": event.payload,
        "request_id": event.context.request_id,
        "function": std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_default(),
    }))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(handle)).await
}
