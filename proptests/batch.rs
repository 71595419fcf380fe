//! Property: a batch body (records of a JSON header line and `size` bytes,
//! blank lines between some), pushed into the framing in chunks cut
//! anywhere, gives back exactly the records written, in order; the same
//! body cut short anywhere inside a record is refused at its end, naming
//! that record.

use ferry::server::batch_body::{Framing, Record};
use proptest::prelude::*;

/// Records: a path name and bytes (newlines and braces included).
fn records() -> impl Strategy<Value = Vec<(String, Vec<u8>, bool)>> {
    proptest::collection::vec(
        (
            "[a-z0-9]{1,12}",
            proptest::collection::vec(
                prop_oneof![Just(b'\n'), Just(b'{'), Just(b'\r'), any::<u8>()],
                0..3000,
            ),
            any::<bool>(),
        ),
        0..12,
    )
}

fn body(records: &[(String, Vec<u8>, bool)]) -> (Vec<u8>, Vec<usize>) {
    let mut out = vec![];
    let mut ends = vec![];
    for (name, bytes, blank) in records {
        if *blank {
            out.extend_from_slice(b"\n\r\n");
        }
        let header = serde_json::json!({"store_path": name, "size": bytes.len()});
        out.extend(format!("{header}\n").into_bytes());
        out.extend_from_slice(bytes);
        ends.push(out.len());
    }
    (out, ends)
}

/// Pushes `body` in chunks at `cuts`; the records, then `finish`.
fn frame(body: &[u8], cuts: &[usize]) -> (Vec<Record>, ferry::error::Result<()>) {
    let mut f = Framing::new(1 << 20, 1 << 20);
    let mut got = vec![];
    let mut at = 0;
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
    points.push(body.len());
    points.sort();
    for p in points {
        f.push(&body[at..p]);
        at = p;
        while let Some(r) = f.next_record().expect("well-formed records") {
            got.push(r);
        }
    }
    let end = f.finish();
    (got, end)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn records_come_back_whatever_the_chunking(
        records in records(),
        cuts in proptest::collection::vec(any::<usize>(), 0..40),
    ) {
        let (body, _) = body(&records);
        let (got, end) = frame(&body, &cuts);
        prop_assert!(end.is_ok());
        prop_assert_eq!(got.len(), records.len());
        for ((header, bytes), (name, want, _)) in got.iter().zip(&records) {
            prop_assert_eq!(header.get("store_path").and_then(|v| v.as_str()), Some(name.as_str()));
            prop_assert!(header.get("size").is_none());
            prop_assert_eq!(&bytes[..], &want[..]);
        }
    }

    #[test]
    fn a_body_cut_inside_a_record_is_refused_naming_it(
        records in records().prop_filter("a record with bytes", |r| r.iter().any(|x| !x.1.is_empty())),
        pick in any::<usize>(),
        cuts in proptest::collection::vec(any::<usize>(), 0..10),
    ) {
        let (body, ends) = body(&records);
        // Cut one byte before the end of a record that has bytes.
        let with_bytes: Vec<usize> = (0..records.len()).filter(|i| !records[*i].1.is_empty()).collect();
        let k = with_bytes[pick % with_bytes.len()];
        let short = &body[..ends[k] - 1];
        let (got, end) = frame(short, &cuts);
        prop_assert_eq!(got.len(), k);
        let e = end.expect_err("a cut record");
        let message = e.to_string();
        prop_assert!(message.contains(&format!("record {}", k + 1)), "{}", message);
    }
}
