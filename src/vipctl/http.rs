//! vipctl's reads of each vipd's status endpoints, with the shared client
//! (`http_client`; plain HTTP: the status server listens on the node
//! network only).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;

pub use crate::http_client::get;

pub async fn get_json<T: DeserializeOwned>(url: &str, timeout: Duration) -> Result<T> {
    let (status, body) = get(url, timeout).await?;
    if status != 200 {
        bail!("{url}: HTTP {status}");
    }
    serde_json::from_str(&body).with_context(|| format!("{url}: not a vipd status document"))
}
