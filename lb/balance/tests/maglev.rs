//! Maglev table properties: balance, weights, minimal disruption, determinism, errors.

use padis_balance::maglev::is_prime;
use padis_balance::{next_prime_at_least, Maglev, MaglevError, DEFAULT_TABLE_SIZE};

fn names(n: usize) -> Vec<(String, u32)> {
    (0..n).map(|i| (format!("10.0.{}.{}:80", i / 250, i % 250), 1)).collect()
}

/// Slot -> backend identity.
fn by_identity<'a>(m: &Maglev, backends: &'a [(String, u32)]) -> Vec<&'a str> {
    m.table().iter().map(|&i| backends[i as usize].0.as_str()).collect()
}

fn counts(m: &Maglev, n: usize) -> Vec<usize> {
    let mut c = vec![0usize; n];
    for &i in m.table() {
        c[i as usize] += 1;
    }
    c
}

#[test]
fn balanced_at_100_backends() {
    let b = names(100);
    let m = Maglev::new(&b, DEFAULT_TABLE_SIZE).unwrap();
    assert_eq!(m.table().len(), DEFAULT_TABLE_SIZE);
    let c = counts(&m, 100);
    let mean = DEFAULT_TABLE_SIZE as f64 / 100.0;
    let peak = *c.iter().max().unwrap() as f64;
    assert!(peak / mean <= 1.05, "peak/mean = {}", peak / mean);
    assert!(c.iter().all(|&x| x > 0));
}

#[test]
fn weights_give_proportional_slots() {
    let mut b = names(20);
    b[3].1 = 2;
    b[7].1 = 0;
    let m = Maglev::new(&b, DEFAULT_TABLE_SIZE).unwrap();
    let c = counts(&m, 20);
    assert_eq!(c[7], 0, "weight 0 is not in the table");
    let others: Vec<usize> = (0..20).filter(|&i| i != 3 && i != 7).map(|i| c[i]).collect();
    let mean = others.iter().sum::<usize>() as f64 / others.len() as f64;
    let ratio = c[3] as f64 / mean;
    assert!((1.9..=2.1).contains(&ratio), "weight-2 backend got {ratio}x the slots");
    // Large weight spread (Marathon-style 1..100) stays proportional.
    let b2: Vec<(String, u32)> = vec![("a".into(), 100), ("b".into(), 1), ("c".into(), 50)];
    let c2 = counts(&Maglev::new(&b2, DEFAULT_TABLE_SIZE).unwrap(), 3);
    let share = |x: usize| x as f64 / DEFAULT_TABLE_SIZE as f64;
    assert!((share(c2[0]) - 100.0 / 151.0).abs() < 0.01, "{c2:?}");
    assert!((share(c2[1]) - 1.0 / 151.0).abs() < 0.005, "{c2:?}");
}

fn moved(a: &[&str], b: &[&str]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x != y).count() as f64 / a.len() as f64
}

#[test]
fn removing_one_backend_moves_few_slots() {
    for n in [10usize, 100] {
        let all = names(n);
        let fewer: Vec<_> = all.iter().filter(|b| b.0 != all[n / 2].0).cloned().collect();
        let before = Maglev::new(&all, DEFAULT_TABLE_SIZE).unwrap();
        let after = Maglev::new(&fewer, DEFAULT_TABLE_SIZE).unwrap();
        let m = moved(&by_identity(&before, &all), &by_identity(&after, &fewer));
        assert!(m <= 1.0 / n as f64 + 0.01, "n={n}: {m} of slots moved");
        assert!(m >= 1.0 / n as f64 * 0.9, "the removed backend's slots must move");
    }
}

#[test]
fn adding_one_backend_moves_few_slots() {
    for n in [10usize, 100] {
        let before_set = names(n);
        let after_set = names(n + 1);
        let before = Maglev::new(&before_set, DEFAULT_TABLE_SIZE).unwrap();
        let after = Maglev::new(&after_set, DEFAULT_TABLE_SIZE).unwrap();
        let m = moved(&by_identity(&before, &before_set), &by_identity(&after, &after_set));
        assert!(m <= 1.0 / (n + 1) as f64 + 0.01, "n={n}: {m} of slots moved");
    }
}

#[test]
fn deterministic_in_any_input_order() {
    let b = names(37);
    let mut shuffled = b.clone();
    shuffled.reverse();
    shuffled.swap(3, 20);
    let m1 = Maglev::new(&b, 4099).unwrap();
    let m2 = Maglev::new(&shuffled, 4099).unwrap();
    assert_eq!(by_identity(&m1, &b), by_identity(&m2, &shuffled));
    assert_eq!(m1, Maglev::new(&b, 4099).unwrap());
}

/// Pins the table contents: a change of hash, seeds or fill order would silently remap every flow on an upgrade
/// (and nodes of different versions would disagree).
#[test]
fn table_is_stable_across_releases() {
    let b: Vec<(&[u8], u32)> = vec![(b"a", 1), (b"b", 1), (b"c", 2)];
    let m = Maglev::new(&b, 13).unwrap();
    assert_eq!(m.table(), GOLDEN);
}
const GOLDEN: &[u32] = &[1, 2, 0, 2, 1, 2, 2, 2, 0, 1, 2, 0, 2];

#[test]
fn size_must_be_prime_and_large_enough() {
    let b = names(5);
    assert_eq!(Maglev::new(&b, 65536).unwrap_err(), MaglevError::NotPrime(65536));
    assert_eq!(Maglev::new(&b, 1).unwrap_err(), MaglevError::NotPrime(1));
    assert_eq!(Maglev::new(&b, 3).unwrap_err(), MaglevError::TooSmall { size: 3, backends: 5 });
    let dup = vec![("x", 1), ("y", 1), ("x", 3)];
    assert_eq!(Maglev::new(&dup, 7).unwrap_err(), MaglevError::Duplicate { first: 0, second: 2 });
    // Duplicates with weight 0 are not in the table, so they are allowed.
    assert!(Maglev::new(&[("x", 1), ("x", 0)], 7).is_ok());
}

#[test]
fn empty_table_looks_up_nothing() {
    let m = Maglev::new(&[("a", 0u32)], 7).unwrap();
    assert!(m.is_empty());
    assert_eq!(m.lookup(42), None);
    let none: [(&str, u32); 0] = [];
    assert_eq!(Maglev::new(&none, DEFAULT_TABLE_SIZE).unwrap().lookup(1), None);
}

#[test]
fn lookup_usable_walks_to_next_distinct_backend() {
    let b = names(4);
    let m = Maglev::new(&b, 1009).unwrap();
    let down = 2u32;
    let mut moved_keys = 0;
    for h in 0..5000u64 {
        let first = m.lookup(h).unwrap();
        let got = m.lookup_usable(h, &|i| i != down).unwrap();
        assert_ne!(got, down);
        if first == down {
            moved_keys += 1;
            // deterministic
            assert_eq!(got, m.lookup_usable(h, &|i| i != down).unwrap());
        } else {
            assert_eq!(got, first, "keys of usable backends do not move");
        }
    }
    assert!(moved_keys > 0);
    assert_eq!(m.lookup_usable(7, &|_| false), None);
}

#[test]
fn primes() {
    assert_eq!(next_prime_at_least(0), 2);
    assert_eq!(next_prime_at_least(65536), 65537);
    assert_eq!(next_prime_at_least(65537), 65537);
    assert_eq!(next_prime_at_least(100_000), 100_003);
    assert!(is_prime(DEFAULT_TABLE_SIZE));
    assert!(!is_prime(65535));
    assert!(!is_prime(25));
}
