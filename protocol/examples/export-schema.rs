//! Writes the protocol schema to `docs/protocol.schema.json` (or to the path
//! given as the first argument). `scripts/test` checks it is up to date.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let path = std::env::args_os().nth(1).map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(hostbus_protocol::schema::SCHEMA_PATH)
        },
        PathBuf::from,
    );
    std::fs::write(&path, hostbus_protocol::schema::schema_text())?;
    println!("wrote {}", path.display());
    Ok(())
}
