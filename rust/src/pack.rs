//! Best-fit-decreasing packing of whole examples into rows of at most `capacity` tokens, over
//! the whole dataset, and the gather that materializes packed rows.
//!
//! BFD: sort examples by length (descending, ties by index), put each into the open row with
//! the least room that still fits it, else open a row. The open rows sit in an ordered set
//! keyed by (room, row), so each placement is O(log rows): O(n log n) in all, deterministic.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::FileExt;

use rayon::prelude::*;

use crate::error::{DataError, Result};

/// Returns rows as CSR: `row_offsets` (len rows + 1) into `items` (example indices).
pub fn pack_bfd(lengths: &[u32], capacity: u32) -> (Vec<u64>, Vec<u32>) {
    let mut order: Vec<u32> = (0..lengths.len() as u32).collect();
    order.sort_by(|&a, &b| lengths[b as usize].cmp(&lengths[a as usize]).then(a.cmp(&b)));
    let mut open: BTreeSet<(u32, u32)> = BTreeSet::new();
    let mut rows: Vec<Vec<u32>> = Vec::new();
    for &i in &order {
        let len = lengths[i as usize];
        assert!(len <= capacity, "example {i} has {len} tokens > capacity {capacity}");
        let room_row = open.range((len, 0)..).next().copied();
        let (room, row) = match room_row {
            Some(found) => {
                open.remove(&found);
                found
            }
            None => {
                rows.push(Vec::new());
                (capacity, rows.len() as u32 - 1)
            }
        };
        rows[row as usize].push(i);
        if room - len > 0 {
            open.insert((room - len, row));
        }
    }
    let mut offsets = Vec::with_capacity(rows.len() + 1);
    offsets.push(0u64);
    let mut items = Vec::with_capacity(lengths.len());
    for r in rows {
        items.extend_from_slice(&r);
        offsets.push(items.len() as u64);
    }
    (offsets, items)
}

/// Flat columns of packed rows; `*_offsets` delimit rows.
#[derive(Debug, Default, PartialEq)]
pub struct Packed {
    pub input_ids: Vec<i32>,
    pub labels: Vec<i32>,
    pub position_ids: Vec<i32>,
    pub token_offsets: Vec<i32>,
    pub seq_lengths: Vec<i32>,
    pub seq_offsets: Vec<i32>,
}

/// Reads the examples of rows `rows` from the spool files (little-endian i32 token ids and
/// labels, example `k` at token offset `offsets[k]` with `lengths[k]` tokens).
///
/// Positioned reads rather than a memory map: the spool is larger than the memory budget,
/// and mapped pages would count against the process's resident set.
pub fn gather(
    ids_path: &str,
    labels_path: &str,
    offsets: &[u64],
    lengths: &[u32],
    row_offsets: &[u64],
    items: &[u32],
    rows: std::ops::Range<usize>,
) -> Result<Packed> {
    let open = |p: &str| File::open(p).map_err(|e| DataError::Io { path: p.into(), source: e });
    let (ids_file, labels_file) = (open(ids_path)?, open(labels_path)?);
    let read = |f: &File, path: &str, k: u32, out: &mut Vec<i32>| -> Result<()> {
        let n = lengths[k as usize] as usize;
        let mut buf = vec![0u8; n * 4];
        f.read_exact_at(&mut buf, offsets[k as usize] * 4)
            .map_err(|e| DataError::Io { path: path.into(), source: e })?;
        out.extend(buf.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])));
        Ok(())
    };
    let per_row: Vec<(Vec<i32>, Vec<i32>, Vec<i32>)> = rows
        .into_par_iter()
        .map(|r| {
            let members = &items[row_offsets[r] as usize..row_offsets[r + 1] as usize];
            let (mut ids, mut labels, mut seqs) = (Vec::new(), Vec::new(), Vec::new());
            for &k in members {
                read(&ids_file, ids_path, k, &mut ids)?;
                read(&labels_file, labels_path, k, &mut labels)?;
                seqs.push(lengths[k as usize] as i32);
            }
            Ok((ids, labels, seqs))
        })
        .collect::<Result<_>>()?;
    let mut p = Packed { token_offsets: vec![0], seq_offsets: vec![0], ..Default::default() };
    for (ids, labels, seqs) in per_row {
        for &n in &seqs {
            p.position_ids.extend(0..n);
        }
        p.input_ids.extend(ids);
        p.labels.extend(labels);
        p.seq_lengths.extend(seqs);
        p.token_offsets.push(p.input_ids.len() as i32);
        p.seq_offsets.push(p.seq_lengths.len() as i32);
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bfd_fills_best_fitting_row() {
        let (offsets, items) = pack_bfd(&[6, 5, 4, 3, 2], 10);
        // 6 → row0 (room 4); 5 → row1 (room 5); 4 → row0 exact; 3 → row1 (room 2); 2 → row1.
        assert_eq!(offsets, vec![0, 2, 5]);
        assert_eq!(items, vec![0, 2, 1, 3, 4]);
    }

    #[test]
    fn bfd_keeps_every_example_once_within_capacity() {
        let lengths: Vec<u32> = (0..500).map(|i| (i * 7919 % 97 + 1) as u32).collect();
        let (offsets, items) = pack_bfd(&lengths, 128);
        let mut seen = items.clone();
        seen.sort();
        assert_eq!(seen, (0..500).collect::<Vec<u32>>());
        for w in offsets.windows(2) {
            let total: u32 = items[w[0] as usize..w[1] as usize].iter().map(|&k| lengths[k as usize]).sum();
            assert!(total <= 128);
        }
    }
}
