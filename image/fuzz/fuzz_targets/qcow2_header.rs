//! `Header::parse` on arbitrary bytes. The input is the file length the header is checked
//! against (8 bytes, little endian) followed by the start of the image.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ward_image::qcow2::header::{Header, V3_HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    let Some((len, buf)) = data.split_first_chunk::<8>() else {
        return;
    };
    let file_len = u64::from_le_bytes(*len);
    let Ok(h) = Header::parse(buf, file_len) else {
        return;
    };
    // What parsing promises: a cluster size in range and the tables inside the file.
    let cs = h.cluster_size();
    assert!((9..=21).contains(&h.cluster_bits));
    assert!(h.refcount_table_clusters > 0);
    assert!(h.refcount_table_offset + u64::from(h.refcount_table_clusters) * cs <= file_len);
    assert!(h.l1_size == 0 || h.l1_table_offset + u64::from(h.l1_size) * 8 <= file_len);
    assert!(u64::from(h.l1_size) * h.l1_coverage() >= h.size);
    // A header this crate could have written (version 3, its header length, the backing name
    // right after the extensions) serialises to bytes that parse back the same.
    let own_layout = h.version == 3
        && h.header_length == V3_HEADER_LEN
        && (h.backing_file.is_none()
            || h.backing_file_offset
                == Header::backing_name_offset(h.header_length, h.backing_format.as_deref()));
    if own_layout {
        let again = Header::parse(&h.to_bytes(), file_len).expect("serialised header parses");
        assert_eq!(again, h);
    }
});
