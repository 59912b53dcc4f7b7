//! The socket transport without an agent: a socket path where nothing
//! listens is a connection error that names it. Everything else the
//! transport does is tested against a real agent in
//! tests/tests/socket.rs.

use hostbus_client::{Client, ClientConfig, ErrorKind};
use uuid::Uuid;

#[tokio::test]
async fn a_missing_socket_is_a_connection_error_naming_it() {
    let path = std::env::temp_dir().join(format!("hostbus-no-agent-{}.sock", Uuid::new_v4()));
    let e = Client::connect(ClientConfig::local(&path))
        .await
        .err()
        .expect("no agent there");
    assert_eq!(e.kind(), ErrorKind::Connection);
    assert!(e.message().contains(&path.display().to_string()), "{e}");
}
