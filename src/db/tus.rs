//! The `tus_uploads` table: what the tus door remembers of an upload.

use super::{Conn, params};

use crate::error::Result;

/// The kind of a tus upload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TusKind {
    Single,
    Partial,
    Final,
}

impl TusKind {
    fn as_str(self) -> &'static str {
        match self {
            TusKind::Single => "single",
            TusKind::Partial => "partial",
            TusKind::Final => "final",
        }
    }

    fn parse(s: &str) -> TusKind {
        match s {
            "partial" => TusKind::Partial,
            "final" => TusKind::Final,
            _ => TusKind::Single,
        }
    }
}

/// A tus upload row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TusRow {
    pub id: String,
    pub kind: TusKind,
    pub upload_length: Option<u64>,
    pub metadata: String,
    pub concat: String,
}

/// Inserts a row.
pub fn insert(conn: &Conn<'_>, r: &TusRow) -> Result<()> {
    conn.execute(
        "INSERT INTO tus_uploads (id, kind, upload_length, metadata, concat) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![r.id, r.kind.as_str(), r.upload_length.map(|l| l as i64), r.metadata, r.concat],
    )?;
    Ok(())
}

/// The row of upload `id`.
pub fn get(conn: &Conn<'_>, id: &str) -> Result<Option<TusRow>> {
    conn.query_opt(
        "SELECT id, kind, upload_length, metadata, concat FROM tus_uploads WHERE id = ?1",
        params![id],
        |r| {
            let kind: String = r.get(1)?;
            Ok(TusRow {
                id: r.get(0)?,
                kind: TusKind::parse(&kind),
                upload_length: r.get::<Option<i64>>(2)?.map(|l| l as u64),
                metadata: r.get(3)?,
                concat: r.get(4)?,
            })
        },
    )
}

/// Sets a deferred length.
pub fn set_length(conn: &Conn<'_>, id: &str, length: u64) -> Result<()> {
    conn.execute(
        "UPDATE tus_uploads SET upload_length = ?2 WHERE id = ?1",
        params![id, length as i64],
    )?;
    Ok(())
}
