//! zstd helpers shared by the upload verifier and the read path.

use std::io::{self, Read};

/// The zstd level used when the server compresses a plain NAR.
pub const DEFAULT_LEVEL: i32 = 3;

/// A reader that decompresses a zstd stream (any number of frames).
pub fn decoder<'a, R: Read + 'a>(r: R) -> io::Result<impl Read + 'a> {
    zstd::stream::read::Decoder::new(r)
}
