//! `GET /v1/events`: the feed's events as server-sent events, with the
//! bus's records, epochs and sequence numbers (docs/http.md, "Events").

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{IntoResponse, Response};
use futures_lite::stream;
use hostbus_protocol::{encode, ContentType, Event};
use tokio::sync::broadcast::error::RecvError;

use super::{HttpBinding, Remote};

/// How often an idle stream says it is alive.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// One event as an SSE message: `id` its number, `event` its kind.
fn message(event: &Event) -> Sse {
    let data = encode(ContentType::Json, event)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    Sse::default()
        .id(event.seq.to_string())
        .event(format!("{}.{}", event.class, event.action))
        .data(data)
}

pub(super) async fn events(
    State(b): State<Arc<HttpBinding>>,
    ConnectInfo(remote): ConnectInfo<Remote>,
) -> Response {
    if let Some(r) = b.refuse_reader(&remote, "GET /v1/events") {
        return r;
    }
    let (rx, last) = b.feed.subscribe();
    let stamp = b.feed.stamp();
    let hello = serde_json::json!({
        "host_id": stamp.host_id(),
        "epoch": stamp.epoch(),
        "last_seq": last,
    });
    let hello = Sse::default().event("hello").data(hello.to_string());
    // Events numbered after `last` (the subscription has them all);
    // a subscriber that falls behind by more than the buffer misses some,
    // and the gap in `seq` tells it to resync.
    let following = stream::unfold(rx, move |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(ev) if ev.seq <= last => continue,
                Ok(ev) => return Some((Ok::<_, Infallible>(message(&ev)), rx)),
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "an HTTP event subscriber fell behind");
                    continue;
                }
                Err(RecvError::Closed) => return None,
            }
        }
    });
    let all = futures_lite::StreamExt::chain(stream::once(Ok(hello)), following);
    axum::response::Sse::new(all)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
        .into_response()
}
