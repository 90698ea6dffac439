//! The pod IP allocator against a real state directory: concurrency (threads, and several
//! pools on one directory as several agent processes would have), restarts, round-robin
//! reuse, exhaustion, the reserved addresses, idempotency, and refusing a changed CIDR.
//! Needs no root: everything lives in temp dirs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, Barrier};

use coxswain_node::Error;
use coxswain_node::ipam::Pool;
use ipnet::Ipv4Net;

fn net(text: &str) -> Ipv4Net {
    text.parse().unwrap()
}

fn addr(text: &str) -> Ipv4Addr {
    text.parse().unwrap()
}

/// Runs `allocate` for every owner at once (released together by a barrier), one thread per
/// owner, cycling over `pools`; returns each owner's result.
fn allocate_concurrently(
    pools: &[Arc<Pool>],
    owners: Vec<String>,
) -> Vec<(String, Result<Ipv4Addr, Error>)> {
    let barrier = Arc::new(Barrier::new(owners.len()));
    let handles: Vec<_> = owners
        .into_iter()
        .enumerate()
        .map(|(i, owner)| {
            let pool = pools[i % pools.len()].clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let result = pool.allocate(&owner);
                (owner, result)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|handle| handle.join().unwrap())
        .collect()
}

#[test]
fn many_threads_allocating_at_once_get_distinct_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let pool = Arc::new(Pool::open(dir.path(), net("10.88.0.0/24")).unwrap());
    let owners: Vec<String> = (0..64).map(|i| format!("pod-{i}")).collect();
    let results = allocate_concurrently(std::slice::from_ref(&pool), owners);

    let mut seen = HashSet::new();
    for (owner, result) in &results {
        let ip = *result.as_ref().unwrap();
        assert!(seen.insert(ip), "{ip} handed out twice (again to {owner})");
        assert_eq!(pool.get(owner).unwrap(), Some(ip));
    }
    let listed = pool.list().unwrap();
    assert_eq!(listed.len(), 64);
    for (ip, owner) in listed {
        assert!(
            results
                .iter()
                .any(|(o, r)| *o == owner && *r.as_ref().unwrap() == ip)
        );
    }
}

#[test]
fn two_pools_on_one_dir_never_hand_out_the_same_address() {
    let dir = tempfile::tempdir().unwrap();
    // Two independent openings, as two agent processes would have: each call takes its own
    // lock and claims its own files, sharing nothing in memory.
    let pools = [
        Arc::new(Pool::open(dir.path(), net("10.88.0.0/27")).unwrap()),
        Arc::new(Pool::open(dir.path(), net("10.88.0.0/27")).unwrap()),
    ];
    // A /27 hands out 29 addresses; ask for 40 so the two also race over the last ones.
    let owners: Vec<String> = (0..40).map(|i| format!("pod-{i}")).collect();
    let results = allocate_concurrently(&pools, owners);

    let mut seen = HashSet::new();
    let mut exhausted = 0;
    for (owner, result) in results {
        match result {
            Ok(ip) => assert!(seen.insert(ip), "{ip} handed out twice (again to {owner})"),
            Err(Error::Exhausted { .. }) => exhausted += 1,
            Err(err) => panic!("{owner}: unexpected error {err}"),
        }
    }
    assert_eq!(seen.len(), 29);
    assert_eq!(exhausted, 11);
    assert_eq!(pools[0].list().unwrap(), pools[1].list().unwrap());
    assert!(!seen.contains(&addr("10.88.0.1")));
}

#[test]
fn state_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let pool = Pool::open(dir.path(), net("10.88.0.0/24")).unwrap();
        assert_eq!(pool.allocate("pod-a").unwrap(), addr("10.88.0.2"));
        assert_eq!(pool.allocate("pod-b").unwrap(), addr("10.88.0.3"));
        assert_eq!(pool.allocate("pod-c").unwrap(), addr("10.88.0.4"));
        assert_eq!(pool.release("pod-c").unwrap(), Some(addr("10.88.0.4")));
        pool.list().unwrap()
    };

    let pool = Pool::open(dir.path(), net("10.88.0.0/24")).unwrap();
    assert_eq!(pool.list().unwrap(), before);
    assert_eq!(pool.get("pod-a").unwrap(), Some(addr("10.88.0.2")));
    assert_eq!(pool.get("pod-b").unwrap(), Some(addr("10.88.0.3")));
    assert_eq!(pool.get("pod-c").unwrap(), None);
    // Existing owners keep their address across the restart...
    assert_eq!(pool.allocate("pod-a").unwrap(), addr("10.88.0.2"));
    // ...and round-robin resumes after the last address handed out, so the address freed
    // just before the restart is not reused at once.
    assert_eq!(pool.allocate("pod-d").unwrap(), addr("10.88.0.5"));
}

#[test]
fn freed_addresses_come_back_only_after_the_rest_of_the_range() {
    let dir = tempfile::tempdir().unwrap();
    // A /29: .0 network, .1 gateway, .2 to .6 for pods, .7 broadcast.
    let pool = Pool::open(dir.path(), net("10.88.0.0/29")).unwrap();
    assert_eq!(pool.allocate("pod-a").unwrap(), addr("10.88.0.2"));
    assert_eq!(pool.allocate("pod-b").unwrap(), addr("10.88.0.3"));
    assert_eq!(pool.allocate("pod-c").unwrap(), addr("10.88.0.4"));
    assert_eq!(pool.release("pod-a").unwrap(), Some(addr("10.88.0.2")));

    assert_eq!(pool.allocate("pod-d").unwrap(), addr("10.88.0.5"));
    assert_eq!(pool.allocate("pod-e").unwrap(), addr("10.88.0.6"));
    // Wraps around to the freed .2, skipping .3 and .4 which are still held.
    assert_eq!(pool.allocate("pod-f").unwrap(), addr("10.88.0.2"));

    assert_eq!(pool.release("pod-c").unwrap(), Some(addr("10.88.0.4")));
    assert_eq!(pool.release("pod-b").unwrap(), Some(addr("10.88.0.3")));
    // Round-robin continues from .2 (the last handed out): .3 comes before .4.
    assert_eq!(pool.allocate("pod-g").unwrap(), addr("10.88.0.3"));
    assert_eq!(pool.allocate("pod-h").unwrap(), addr("10.88.0.4"));
}

#[test]
fn a_29_is_exhausted_after_five_pods() {
    let dir = tempfile::tempdir().unwrap();
    let pool = Pool::open(dir.path(), net("10.88.0.0/29")).unwrap();
    let handed: HashSet<Ipv4Addr> = (0..5)
        .map(|i| pool.allocate(&format!("pod-{i}")).unwrap())
        .collect();
    assert_eq!(handed.len(), 5);

    let err = pool.allocate("pod-5").unwrap_err();
    match &err {
        Error::Exhausted { pool: name, .. } => assert_eq!(name, "10.88.0.0/29"),
        other => panic!("expected Exhausted, got {other}"),
    }
    // A failed allocation leaves nothing behind for its owner.
    assert_eq!(pool.get("pod-5").unwrap(), None);
    assert_eq!(pool.list().unwrap().len(), 5);

    // Freeing one makes room again, for exactly one.
    let freed = pool.release("pod-2").unwrap().unwrap();
    assert_eq!(pool.allocate("pod-5").unwrap(), freed);
    assert!(matches!(
        pool.allocate("pod-6"),
        Err(Error::Exhausted { .. })
    ));
}

#[test]
fn the_gateway_network_and_broadcast_are_never_handed_out() {
    let dir = tempfile::tempdir().unwrap();
    let pool = Pool::open(dir.path(), net("10.88.0.0/24")).unwrap();
    assert_eq!(pool.gateway(), addr("10.88.0.1"));
    let mut handed = HashSet::new();
    let mut i = 0;
    loop {
        match pool.allocate(&format!("pod-{i}")) {
            Ok(ip) => assert!(handed.insert(ip)),
            Err(Error::Exhausted { .. }) => break,
            Err(err) => panic!("{err}"),
        }
        i += 1;
    }
    assert_eq!(handed.len(), 253);
    for reserved in ["10.88.0.0", "10.88.0.1", "10.88.0.255"] {
        assert!(
            !handed.contains(&addr(reserved)),
            "{reserved} was handed out"
        );
    }
    assert!(handed.iter().all(|ip| pool.cidr().contains(ip)));

    // The smallest pool: a /30 has exactly one address for a pod.
    let dir = tempfile::tempdir().unwrap();
    let pool = Pool::open(dir.path(), net("10.99.0.4/30")).unwrap();
    assert_eq!(pool.gateway(), addr("10.99.0.5"));
    assert_eq!(pool.allocate("only").unwrap(), addr("10.99.0.6"));
    assert!(matches!(
        pool.allocate("second"),
        Err(Error::Exhausted { .. })
    ));
}

#[test]
fn allocation_is_idempotent_per_owner() {
    let dir = tempfile::tempdir().unwrap();
    let pool = Pool::open(dir.path(), net("10.88.0.0/24")).unwrap();
    let first = pool.allocate("pod-a").unwrap();
    assert_eq!(pool.allocate("pod-a").unwrap(), first);
    // Also when asked through another opening of the directory (a restarted agent).
    let other = Pool::open(dir.path(), net("10.88.0.0/24")).unwrap();
    assert_eq!(other.allocate("pod-a").unwrap(), first);
    assert_eq!(pool.list().unwrap(), vec![(first, "pod-a".to_string())]);

    // Many threads asking for one owner at once still get one address.
    let results = allocate_concurrently(
        &[Arc::new(pool.clone()), Arc::new(other)],
        vec!["pod-b".to_string(); 16],
    );
    let addresses: HashSet<Ipv4Addr> = results.into_iter().map(|(_, r)| r.unwrap()).collect();
    assert_eq!(addresses.len(), 1);
    assert_eq!(pool.list().unwrap().len(), 2);

    // Releasing is idempotent too.
    assert_eq!(pool.release("pod-a").unwrap(), Some(first));
    assert_eq!(pool.release("pod-a").unwrap(), None);
    assert_eq!(pool.get("pod-a").unwrap(), None);
}

#[test]
fn reopening_with_another_cidr_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pool = Pool::open(dir.path(), net("10.88.0.0/24")).unwrap();
    let held = pool.allocate("pod-a").unwrap();

    for other in ["10.89.0.0/24", "10.88.0.0/25", "10.88.0.0/16"] {
        let err = Pool::open(dir.path(), net(other)).unwrap_err();
        match &err {
            Error::State { path, reason } => {
                assert_eq!(path, &dir.path().join("cidr"));
                assert!(reason.contains("10.88.0.0/24"), "{reason}");
                assert!(reason.contains(other), "{reason}");
            }
            e => panic!("{other}: expected a State error, got {e}"),
        }
    }
    // The refusal changed nothing: the original pool still works as before.
    let reopened = Pool::open(dir.path(), net("10.88.0.0/24")).unwrap();
    assert_eq!(reopened.get("pod-a").unwrap(), Some(held));
}

#[test]
fn unreadable_address_files_stay_allocated() {
    let dir = tempfile::tempdir().unwrap();
    let pool = Pool::open(dir.path(), net("10.88.0.0/29")).unwrap();
    // What a crash or a hand edit could leave: an empty file and one cut mid-owner.
    std::fs::write(dir.path().join("10.88.0.2"), "").unwrap();
    std::fs::write(dir.path().join("10.88.0.3"), "pod-tr").unwrap();

    assert_eq!(pool.allocate("pod-a").unwrap(), addr("10.88.0.4"));
    assert_eq!(
        pool.list().unwrap(),
        vec![
            (addr("10.88.0.2"), String::new()),
            (addr("10.88.0.3"), String::new()),
            (addr("10.88.0.4"), "pod-a".to_string()),
        ]
    );
    // A truncated owner is not taken for its prefix.
    assert_eq!(pool.get("pod-tr").unwrap(), None);
    assert_eq!(pool.release("pod-tr").unwrap(), None);

    assert_eq!(pool.allocate("pod-b").unwrap(), addr("10.88.0.5"));
    assert_eq!(pool.allocate("pod-c").unwrap(), addr("10.88.0.6"));
    assert!(matches!(
        pool.allocate("pod-d"),
        Err(Error::Exhausted { .. })
    ));
    assert!(dir.path().join("10.88.0.2").exists());
    assert!(dir.path().join("10.88.0.3").exists());
}

#[test]
fn invalid_owners_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let pool = Pool::open(dir.path(), net("10.88.0.0/29")).unwrap();
    let long = "u".repeat(254);
    for bad in ["", "ns/pod", "pod\0", "pod\n", long.as_str()] {
        match pool.allocate(bad) {
            Err(Error::Config { field, .. }) => assert_eq!(field, "pod IP owner"),
            other => panic!("{bad:?}: expected a Config error, got {other:?}"),
        }
    }
    assert!(pool.list().unwrap().is_empty());
}
