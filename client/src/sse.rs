//! Server-sent events framing (the `text/event-stream` of the agent's
//! `GET /v1/events`, docs/http.md): bytes in, messages out. Pure data, so
//! it is unit-tested without a server.
//!
//! The rules are the WHATWG EventSource parser's: lines end with LF, CR or
//! CRLF (also across chunks); a line starting with `:` is a comment (the
//! agent's keep-alives); `field: value` loses one space after the colon;
//! `data` lines join with LF; an empty line ends a message, and a message
//! without data is dropped. `id` and `retry` are not used: the event's own
//! `seq` says where it stands, and the subscription reconnects on its own.

/// The longest line or message kept (a longer one is dropped whole): the
/// same bound as a reply's.
const LIMIT: usize = crate::reply::MAX_REPLY;

/// One message: its `event` field (`message` when it had none) and its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    pub(crate) event: String,
    pub(crate) data: String,
}

/// The parser's state between chunks.
#[derive(Debug, Default)]
pub(crate) struct Parser {
    line: Vec<u8>,
    /// The last byte was a CR: an LF right after it ends no other line.
    after_cr: bool,
    event: Option<String>,
    data: Option<String>,
    /// A line or the message grew past [`LIMIT`]: the message is dropped.
    overflow: bool,
}

impl Parser {
    /// Takes in the next chunk of the stream; returns the messages it ended.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Vec<Message> {
        let mut out = Vec::new();
        for &b in bytes {
            if std::mem::take(&mut self.after_cr) && b == b'\n' {
                continue;
            }
            match b {
                b'\n' => self.end_line(&mut out),
                b'\r' => {
                    self.after_cr = true;
                    self.end_line(&mut out);
                }
                _ if self.line.len() < LIMIT => self.line.push(b),
                _ => self.overflow = true,
            }
        }
        out
    }

    fn end_line(&mut self, out: &mut Vec<Message>) {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            let event = self.event.take();
            let data = self.data.take();
            if std::mem::take(&mut self.overflow) {
                tracing::warn!("an event-stream message longer than {LIMIT} bytes was dropped");
            } else if let Some(mut data) = data {
                data.pop();
                out.push(Message {
                    event: event.unwrap_or_else(|| "message".to_owned()),
                    data,
                });
            }
            return;
        }
        let line = String::from_utf8_lossy(&line);
        let (field, value) = match line.split_once(':') {
            Some(("", _)) => return,
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_ref(), ""),
        };
        match field {
            "event" => self.event = Some(value.to_owned()),
            "data" => {
                // Each line and an LF; the last LF goes at the message's end.
                let data = self.data.get_or_insert_with(String::new);
                if data.len() + value.len() >= LIMIT {
                    self.overflow = true;
                } else {
                    data.push_str(value);
                    data.push('\n');
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(chunks: &[&[u8]]) -> Vec<Message> {
        let mut p = Parser::default();
        chunks.iter().flat_map(|c| p.push(c)).collect()
    }

    fn msg(event: &str, data: &str) -> Message {
        Message {
            event: event.to_owned(),
            data: data.to_owned(),
        }
    }

    #[test]
    fn reads_the_agents_stream() {
        let stream = b"event: hello\ndata: {\"host_id\":\"h1\",\"last_seq\":41}\n\n\
: keep-alive\n\n\
id: 42\nevent: vm.started\ndata: {\"seq\":42}\n\n";
        assert_eq!(
            all(&[stream]),
            [
                msg("hello", "{\"host_id\":\"h1\",\"last_seq\":41}"),
                msg("vm.started", "{\"seq\":42}")
            ]
        );
    }

    #[test]
    fn messages_split_anywhere_come_out_whole() {
        let stream = b"event: vm.paused\r\ndata: {\"seq\":7}\r\n\r\nevent: x\rdata:y\r\r";
        for cut in 0..stream.len() {
            let (a, b) = stream.split_at(cut);
            assert_eq!(
                all(&[a, b]),
                [msg("vm.paused", "{\"seq\":7}"), msg("x", "y")],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn data_lines_join_and_messages_without_data_are_dropped() {
        assert_eq!(
            all(&[b"data: a\ndata:  b\ndata\n\nevent: lonely\n\ndata: c\n\n"]),
            [msg("message", "a\n b\n"), msg("message", "c")]
        );
        // Not ended by an empty line: not yet a message.
        assert!(all(&[b"event: x\ndata: y\n"]).is_empty());
    }
}
