//! A plain HTTP/1.1 GET for vipd's status endpoints (hyper, no TLS: the
//! status server listens on the node network only).

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

/// GETs `url` (`http://host:port/path`); the status code and body.
pub async fn get(url: &str, timeout: Duration) -> Result<(u16, String)> {
    let uri: hyper::Uri = url.parse().with_context(|| format!("bad URL {url:?}"))?;
    if uri.scheme_str() != Some("http") {
        bail!("{url}: only http:// is supported");
    }
    let host = uri
        .host()
        .ok_or_else(|| anyhow!("{url}: no host"))?
        .trim_matches(['[', ']'])
        .to_string();
    let port = uri.port_u16().unwrap_or(80);
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let work = async {
        let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header(
                hyper::header::HOST,
                uri.authority().map(|a| a.as_str()).unwrap_or("localhost"),
            )
            .body(Empty::<Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok::<_, anyhow::Error>((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| anyhow!("{url}: no answer within {timeout:?}"))?
}

pub async fn get_json<T: DeserializeOwned>(url: &str, timeout: Duration) -> Result<T> {
    let (status, body) = get(url, timeout).await?;
    if status != 200 {
        bail!("{url}: HTTP {status}");
    }
    serde_json::from_str(&body).with_context(|| format!("{url}: not a vipd status document"))
}
