//! Webhook delivery: one `POST` of the CloudEvent (structured mode, `application/cloudevents+json`), signed
//! per Standard Webhooks: `webhook-id` (the event id, the same on every retry so receivers deduplicate),
//! `webhook-timestamp` (Unix seconds), `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`
//! keyed with the base64 part of the route's `whsec_` secret. A 2xx answer is success; any other status, a
//! redirect, a connection error or the route's timeout is a failure, retried with the worker's backoff.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use herald::RecordedEvent;
use herald::jobs::JobResult;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The Standard Webhooks signature header value for one message.
pub(crate) fn signature(
    secret: &str,
    id: &str,
    timestamp: u64,
    body: &str,
) -> Result<String, String> {
    let key = secret
        .strip_prefix("whsec_")
        .ok_or("the webhook secret does not start with `whsec_`")?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(key)
        .map_err(|e| format!("the webhook secret is not base64: {e}"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|e| e.to_string())?;
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body.as_bytes());
    let digest = mac.finalize().into_bytes();
    Ok(format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    ))
}

/// POSTs `body` (the CloudEvent of `event`) to `url`.
pub(crate) async fn post(
    http: &reqwest::Client,
    url: &str,
    secret: &str,
    timeout_ms: u64,
    event: &RecordedEvent,
    body: String,
) -> JobResult {
    let id = event.id.to_string();
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let signature = match signature(secret, &id, timestamp, &body) {
        Ok(s) => s,
        Err(e) => return JobResult::fail(e),
    };
    let sent = http
        .post(url)
        .timeout(Duration::from_millis(timeout_ms))
        .header("content-type", "application/cloudevents+json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await;
    match sent {
        Ok(response) if response.status().is_success() => JobResult::Success,
        Ok(response) => JobResult::fail(format!(
            "POST {url} answered {} for event {id}",
            response.status()
        )),
        Err(e) if e.is_timeout() => JobResult::fail(format!(
            "POST {url} timed out after {timeout_ms} ms for event {id}"
        )),
        Err(e) => JobResult::fail(format!("POST {url} failed for event {id}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification.
    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        let signed = signature(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        );
        assert_eq!(
            signed.as_deref(),
            Ok("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
    }

    #[test]
    fn a_bad_secret_is_an_error_not_a_panic() {
        assert!(signature("nope", "i", 1, "b").is_err());
        assert!(signature("whsec_!!!", "i", 1, "b").is_err());
    }
}
