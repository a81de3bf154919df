//! A decoder for the `pgoutput` logical replication messages we act on:
//! Relation, Insert, Update, Delete and Truncate (protocol version 1).
//! Everything else (Begin and Commit are decoded by the replication client;
//! Type, Origin, Message) is reported as `Other`.

use bytes::Bytes;

/// One column of a relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// Type OID.
    pub type_oid: u32,
    /// Part of the replica identity (the primary key, by default).
    pub key: bool,
}

/// A table's description, sent before its first change and after DDL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Relation OID.
    pub id: u32,
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    /// Columns, in tuple order.
    pub columns: Vec<Column>,
}

impl Relation {
    /// The name graphs use: bare for `public`, else `schema.table`.
    pub fn qualified(&self) -> String {
        if self.schema == "public" || self.schema.is_empty() {
            self.name.clone()
        } else {
            format!("{}.{}", self.schema, self.name)
        }
    }
}

/// One column value in a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datum {
    /// SQL NULL.
    Null,
    /// A TOASTed value that did not change (its value is not sent).
    Unchanged,
    /// Text format.
    Text(Bytes),
    /// Binary format.
    Binary(Bytes),
}

/// A decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A relation description.
    Relation(Relation),
    /// A new row.
    Insert {
        /// Relation OID.
        rel: u32,
        /// The row.
        new: Vec<Datum>,
    },
    /// A changed row.
    Update {
        /// Relation OID.
        rel: u32,
        /// The old row (`O`, with REPLICA IDENTITY FULL) or old key (`K`, when the key changed).
        old: Option<(u8, Vec<Datum>)>,
        /// The new row.
        new: Vec<Datum>,
    },
    /// A deleted row: its old key (`K`) or whole old row (`O`).
    Delete {
        /// Relation OID.
        rel: u32,
        /// `K` or `O`, and the tuple.
        old: (u8, Vec<Datum>),
    },
    /// Truncated relations.
    Truncate {
        /// Relation OIDs.
        rels: Vec<u32>,
    },
    /// Anything we do not act on.
    Other(u8),
}

struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    fn need(&self, n: usize) -> Result<(), String> {
        if self.pos + n > self.buf.len() {
            return Err(format!("pgoutput message truncated at byte {}", self.pos));
        }
        Ok(())
    }
    fn u8(&mut self) -> Result<u8, String> {
        self.need(1)?;
        self.pos += 1;
        Ok(self.buf[self.pos - 1])
    }
    fn u16(&mut self) -> Result<u16, String> {
        self.need(2)?;
        let v = u16::from_be_bytes([self.buf[self.pos], self.buf[self.pos + 1]]);
        self.pos += 2;
        Ok(v)
    }
    fn u32(&mut self) -> Result<u32, String> {
        self.need(4)?;
        let b = &self.buf[self.pos..self.pos + 4];
        self.pos += 4;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn cstr(&mut self) -> Result<String, String> {
        let end = self.buf[self.pos..]
            .iter()
            .position(|b| *b == 0)
            .ok_or("unterminated string in pgoutput message")?;
        let s = String::from_utf8_lossy(&self.buf[self.pos..self.pos + end]).into_owned();
        self.pos += end + 1;
        Ok(s)
    }
    fn bytes(&mut self, n: usize) -> Result<Bytes, String> {
        self.need(n)?;
        let b = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(b)
    }
    fn tuple(&mut self) -> Result<Vec<Datum>, String> {
        let n = self.u16()? as usize;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(match self.u8()? {
                b'n' => Datum::Null,
                b'u' => Datum::Unchanged,
                b't' => {
                    let len = self.u32()? as usize;
                    Datum::Text(self.bytes(len)?)
                }
                b'b' => {
                    let len = self.u32()? as usize;
                    Datum::Binary(self.bytes(len)?)
                }
                k => return Err(format!("unknown tuple column kind {:?}", k as char)),
            });
        }
        Ok(out)
    }
}

/// Decodes one pgoutput message.
pub fn decode(data: Bytes) -> Result<Message, String> {
    let mut r = Reader { buf: data, pos: 0 };
    let tag = r.u8()?;
    Ok(match tag {
        b'R' => {
            let id = r.u32()?;
            let schema = r.cstr()?;
            let name = r.cstr()?;
            let replica_identity = r.u8()?;
            let n = r.u16()? as usize;
            let mut columns = Vec::with_capacity(n);
            for _ in 0..n {
                let flags = r.u8()?;
                let name = r.cstr()?;
                let type_oid = r.u32()?;
                let _typmod = r.u32()?;
                columns.push(Column {
                    name,
                    type_oid,
                    key: flags & 1 == 1,
                });
            }
            Message::Relation(Relation {
                id,
                schema,
                name,
                replica_identity,
                columns,
            })
        }
        b'I' => {
            let rel = r.u32()?;
            match r.u8()? {
                b'N' => Message::Insert {
                    rel,
                    new: r.tuple()?,
                },
                k => return Err(format!("insert: expected N, got {:?}", k as char)),
            }
        }
        b'U' => {
            let rel = r.u32()?;
            let mut old = None;
            let mut k = r.u8()?;
            if k == b'K' || k == b'O' {
                old = Some((k, r.tuple()?));
                k = r.u8()?;
            }
            if k != b'N' {
                return Err(format!("update: expected N, got {:?}", k as char));
            }
            Message::Update {
                rel,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let rel = r.u32()?;
            let k = r.u8()?;
            if k != b'K' && k != b'O' {
                return Err(format!("delete: expected K or O, got {:?}", k as char));
            }
            Message::Delete {
                rel,
                old: (k, r.tuple()?),
            }
        }
        b'T' => {
            let n = r.u32()? as usize;
            let _options = r.u8()?;
            let rels = (0..n).map(|_| r.u32()).collect::<Result<_, _>>()?;
            Message::Truncate { rels }
        }
        other => Message::Other(other),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relation_bytes() -> Vec<u8> {
        let mut v = vec![b'R'];
        v.extend_from_slice(&42u32.to_be_bytes());
        v.extend_from_slice(b"public\0tasks\0");
        v.push(b'f');
        v.extend_from_slice(&2u16.to_be_bytes());
        for (flags, name, oid) in [(1u8, "id", 20u32), (0, "title", 25)] {
            v.push(flags);
            v.extend_from_slice(name.as_bytes());
            v.push(0);
            v.extend_from_slice(&oid.to_be_bytes());
            v.extend_from_slice(&(-1i32).to_be_bytes());
        }
        v
    }

    #[test]
    fn relations_and_updates_decode() {
        let Message::Relation(r) = decode(relation_bytes().into()).unwrap() else {
            panic!()
        };
        assert_eq!(r.qualified(), "tasks");
        assert!(r.columns[0].key && !r.columns[1].key);
        let mut u = vec![b'U'];
        u.extend_from_slice(&42u32.to_be_bytes());
        u.push(b'O');
        u.extend_from_slice(&2u16.to_be_bytes());
        u.push(b't');
        u.extend_from_slice(&1u32.to_be_bytes());
        u.push(b'7');
        u.push(b'n');
        u.push(b'N');
        u.extend_from_slice(&2u16.to_be_bytes());
        u.push(b't');
        u.extend_from_slice(&1u32.to_be_bytes());
        u.push(b'7');
        u.push(b'u');
        let m = decode(u.into()).unwrap();
        assert_eq!(
            m,
            Message::Update {
                rel: 42,
                old: Some((
                    b'O',
                    vec![Datum::Text(Bytes::from_static(b"7")), Datum::Null]
                )),
                new: vec![Datum::Text(Bytes::from_static(b"7")), Datum::Unchanged],
            }
        );
    }

    #[test]
    fn truncated_messages_are_errors_not_panics() {
        let bytes = relation_bytes();
        for cut in 1..bytes.len() {
            assert!(
                decode(Bytes::copy_from_slice(&bytes[..cut])).is_err(),
                "cut at {cut}"
            );
        }
    }
}
