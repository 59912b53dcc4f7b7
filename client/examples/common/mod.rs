//! What every example starts with: a client connected to the broker named
//! by the first argument (default: the `broker-compose/` cluster's).

use hostbus_client::{Client, ClientConfig, ClientError};

/// The broker `broker-compose/` publishes on the host.
const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5682/%2f";

/// Connects to the broker of the first argument; returns the client and
/// the example's own arguments, which follow it.
pub(crate) async fn connect() -> Result<(Client, impl Iterator<Item = String>), ClientError> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| DEFAULT_URL.into());
    Ok((Client::connect(ClientConfig::new(url)).await?, args))
}
