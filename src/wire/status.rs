//! Kubernetes `Status` objects (meta/v1), the body of every API error.

use serde_json::{json, Value};

/// The `reason` a Kubernetes API server pairs with an HTTP status code.
pub fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        408 => "Timeout",
        409 => "AlreadyExists",
        413 => "RequestEntityTooLarge",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        431 => "RequestHeaderFieldsTooLarge",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Unknown",
    }
}

pub fn failure(code: u16, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason_for(code),
        "code": code,
    })
}

/// A Status naming the object it is about, as `NotFound` and `AlreadyExists` do.
pub fn failure_for(code: u16, message: &str, kind: &str, name: &str) -> Value {
    let mut v = failure(code, message);
    v["details"] = json!({"name": name, "kind": kind});
    v
}
