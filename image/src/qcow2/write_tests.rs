//! The write paths against a model: random writes, zeroings and snapshots on a small-cluster
//! image (many L2 tables, refcount blocks growing), every byte compared after each step and
//! the image checked clean at the end. Large writes go through the batched allocation path,
//! small ones through copy-on-write of partial clusters.

use super::tests::{no_backing, temp_file};
use super::*;

const SIZE: u64 = 3 << 20;

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn run_model(cluster_bits: u32, seed: u64, ordered: bool) {
    let f = temp_file();
    let mut o = Qcow2CreateOptions::new(SIZE);
    o.cluster_bits = cluster_bits;
    create_qcow2(&f, &o).unwrap();
    let mut img = Qcow2Image::open(f.try_clone().unwrap(), false, &mut no_backing).unwrap();
    img.set_ordered_writes(ordered);
    let mut model = vec![0u8; SIZE as usize];
    let mut x = seed;
    for step in 0..120u32 {
        let r = xorshift(&mut x);
        let off = r % SIZE;
        let max = if r.is_multiple_of(3) { 600 << 10 } else { 9000 };
        let len = (xorshift(&mut x) % max + 1).min(SIZE - off);
        if step % 40 == 20 {
            // Later writes must copy the clusters and tables this snapshot shares.
            img.snapshot_create(&format!("s{step}")).unwrap();
        }
        match r % 7 {
            0 => {
                img.write_zeroes(off, len).unwrap();
                model[off as usize..(off + len) as usize].fill(0);
            }
            _ => {
                let data: Vec<u8> = (0..len).map(|i| (i as u8) ^ (step as u8) | 1).collect();
                img.write_at(&data, off).unwrap();
                model[off as usize..(off + len) as usize].copy_from_slice(&data);
            }
        }
        // The range written (with a margin), and every tenth step the whole image.
        let (from, to) = if step % 10 == 9 {
            (0, SIZE)
        } else {
            (off.saturating_sub(5000), (off + len + 5000).min(SIZE))
        };
        let mut got = vec![0u8; (to - from) as usize];
        img.read_at(&mut got, from).unwrap();
        let want = &model[from as usize..to as usize];
        if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
            panic!(
                "cluster_bits {cluster_bits}, step {step}: byte {} differs",
                from + i as u64
            );
        }
    }
    img.flush().unwrap();
    let report = img.check().unwrap();
    assert!(report.is_clean(), "cluster_bits {cluster_bits}: {report:?}");
    drop(img);
    let img = Qcow2Image::open(f, true, &mut no_backing).unwrap();
    let mut got = vec![0u8; SIZE as usize];
    img.read_at(&mut got, 0).unwrap();
    assert!(
        got == model,
        "cluster_bits {cluster_bits}: reopened image differs"
    );
}

#[test]
fn writes_zeroes_and_snapshots_match_a_model() {
    // 512-byte clusters: an L2 table covers 32 KiB, so large writes span many tables.
    run_model(9, 0x9e37_79b9_7f4a_7c15, true);
    run_model(12, 0x0123_4567_89ab_cdef, true);
    run_model(16, 0xdead_beef_cafe_f00d, false);
}

#[test]
fn a_large_write_allocates_one_contiguous_run() {
    let f = temp_file();
    let mut o = Qcow2CreateOptions::new(SIZE);
    o.cluster_bits = 12;
    create_qcow2(&f, &o).unwrap();
    let img = Qcow2Image::open(f, false, &mut no_backing).unwrap();
    img.write_at(&[7u8; 4096], 8192).unwrap();
    // 64 clusters from 0: cluster 2 is written in place, the others around it in two runs.
    img.write_at(&vec![9u8; 64 * 4096], 0).unwrap();
    let map = img.map().unwrap();
    let data: Vec<_> = map.iter().filter(|e| e.kind == MapKind::Data).collect();
    assert_eq!(data.len(), 3, "{map:?}");
    assert_eq!(data[0].length, 2 * 4096);
    assert_eq!(data[1].length, 4096);
    assert_eq!(data[2].length, 61 * 4096);
    let mut got = vec![0u8; 64 * 4096];
    img.read_at(&mut got, 0).unwrap();
    assert!(got.iter().all(|&b| b == 9));
    assert!(img.check().unwrap().is_clean());
}

#[test]
fn a_crash_before_a_flush_loses_only_unflushed_writes_and_leaks_at_worst() {
    let f = temp_file();
    let mut o = Qcow2CreateOptions::new(SIZE);
    o.cluster_bits = 12;
    create_qcow2(&f, &o).unwrap();
    let img = Qcow2Image::open(f.try_clone().unwrap(), false, &mut no_backing).unwrap();
    img.write_at(&[0x5a; 10_000], 0).unwrap();
    img.flush().unwrap();
    img.write_at(&[0x6b; 100_000], 1 << 20).unwrap();
    img.write_at(&[0x7c; 3000], 100).unwrap();
    // A crash: nothing more reaches the file.
    std::mem::forget(img);
    let img = Qcow2Image::open(f, true, &mut no_backing).unwrap();
    let r = img.check().unwrap();
    assert_eq!(r.corruptions, 0, "{r:?}");
    assert!(r.leaks > 0, "the unflushed writes' clusters leak: {r:?}");
    let mut got = vec![0u8; 10_000];
    img.read_at(&mut got, 0).unwrap();
    // The overwrite of an allocated cluster went in place; the rest is the flushed data.
    assert!(got[..100].iter().all(|&b| b == 0x5a));
    assert!(got[3100..].iter().all(|&b| b == 0x5a));
    let mut later = vec![1u8; 4096];
    img.read_at(&mut later, 1 << 20).unwrap();
    assert!(
        later.iter().all(|&b| b == 0),
        "unflushed allocation not referenced"
    );
}
