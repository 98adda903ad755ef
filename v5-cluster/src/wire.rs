//! What nodes tell each other on the Redis channel, and the stream IDs that order chat lines.
//!
//! One message is one line of header, then (for some kinds) a body:
//!
//! ```text
//! S <stream id> <node>\n<chat lines, each ending in CRLF>   chat lines, appended to the stream
//! N <members> <node>\n<notice, or nothing>                 a join, leave or rename there
//! H <members> <node>                                       that node is alive, with N members
//! B 0 <node>                                               that node is leaving the cluster
//! P <to> <node>\n<line>                                    a private line for member <to>
//! ```
//!
//! The node's name comes last on the header line, so it may hold any character but a line
//! break. `S` messages are written by the append-and-publish script ([`crate::link`]), which
//! puts the ID of the batch's last stream entry in the header: IDs grow with every append, so
//! a node that knows the last ID it delivered can skip what it has seen and ask the stream for
//! what it missed.

use std::fmt;
use std::str::FromStr;

/// A Redis stream entry ID, `<milliseconds>-<sequence>`: IDs of one stream only grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct StreamId {
    pub millis: u64,
    pub seq: u64,
}

impl FromStr for StreamId {
    type Err = ();

    fn from_str(text: &str) -> Result<Self, ()> {
        let (millis, seq) = text.split_once('-').ok_or(())?;
        Ok(StreamId {
            millis: millis.parse().map_err(|_| ())?,
            seq: seq.parse().map_err(|_| ())?,
        })
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.millis, self.seq)
    }
}

/// One message from the channel, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Chat lines a member of `node` said; `last` is the stream ID of the last of them.
    Said {
        last: StreamId,
        node: String,
        lines: String,
    },
    /// A join, leave or rename on `node`, which now has `members`; `notice` is what its own
    /// members were told (empty if nothing: a large room announces no joins).
    Notice {
        members: usize,
        node: String,
        notice: String,
    },
    /// `node` is alive and has `members`.
    Alive { members: usize, node: String },
    /// `node` is leaving the cluster.
    Bye { node: String },
    /// A private `line` for the member called `to` (in any case), from a member of `node`.
    Private {
        to: String,
        node: String,
        line: String,
    },
}

impl Event {
    /// The node the event comes from.
    pub fn node(&self) -> &str {
        match self {
            Event::Said { node, .. }
            | Event::Notice { node, .. }
            | Event::Alive { node, .. }
            | Event::Bye { node }
            | Event::Private { node, .. } => node,
        }
    }

    /// Decodes a channel message; `None` for anything this version does not know.
    pub fn decode(payload: &[u8]) -> Option<Event> {
        let text = std::str::from_utf8(payload).ok()?;
        let (header, body) = text.split_once('\n').unwrap_or((text, ""));
        let mut words = header.splitn(3, ' ');
        let kind = words.next()?;
        let word = words.next()?;
        let node = words.next()?.to_owned();
        Some(match kind {
            "S" => Event::Said {
                last: word.parse().ok()?,
                node,
                lines: body.to_owned(),
            },
            "N" => Event::Notice {
                members: word.parse().ok()?,
                node,
                notice: body.to_owned(),
            },
            "H" => Event::Alive {
                members: word.parse().ok()?,
                node,
            },
            "B" => Event::Bye { node },
            "P" => Event::Private {
                to: word.to_owned(),
                node,
                line: body.to_owned(),
            },
            _ => return None,
        })
    }

    /// Encodes every kind but `Said`, which only the append-and-publish script writes (it
    /// alone knows the stream ID).
    pub fn encode(&self) -> String {
        match self {
            Event::Said { last, node, lines } => format!("S {last} {node}\n{lines}"),
            Event::Notice {
                members,
                node,
                notice,
            } => format!("N {members} {node}\n{notice}"),
            Event::Alive { members, node } => format!("H {members} {node}"),
            Event::Bye { node } => format!("B 0 {node}"),
            Event::Private { to, node, line } => format!("P {to} {node}\n{line}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_decodes_as_encoded() {
        let node = "host:8085 with spaces".to_owned();
        for event in [
            Event::Said {
                last: StreamId { millis: 17, seq: 2 },
                node: node.clone(),
                lines: "alice says: hi\r\nalice says: ho\r\n".to_owned(),
            },
            Event::Notice {
                members: 3,
                node: node.clone(),
                notice: "* bob joined (7 online)".to_owned(),
            },
            Event::Notice {
                members: 300,
                node: node.clone(),
                notice: String::new(),
            },
            Event::Alive {
                members: 0,
                node: node.clone(),
            },
            Event::Bye { node: node.clone() },
            Event::Private {
                to: "carol".to_owned(),
                node: node.clone(),
                line: "alice (private): psst".to_owned(),
            },
        ] {
            assert_eq!(Event::decode(event.encode().as_bytes()), Some(event));
        }
    }

    #[test]
    fn unknown_or_broken_messages_are_ignored() {
        for payload in ["", "X 1 node", "S notanid node\nx", "N many node\n", "H 1"] {
            assert_eq!(Event::decode(payload.as_bytes()), None, "{payload:?}");
        }
    }

    #[test]
    fn stream_ids_order_by_time_then_sequence() {
        let id = |text: &str| text.parse::<StreamId>().unwrap();
        assert!(id("5-0") < id("5-1"));
        assert!(id("5-9") < id("10-0"));
        assert_eq!(id("1700000000000-3").to_string(), "1700000000000-3");
        assert!("5".parse::<StreamId>().is_err());
    }
}
