use super::*;

#[test]
fn ban_lengths_double_and_cap() {
    let p = Policy::new(Config::default());
    let hours: Vec<u64> = (1..=8).map(|n| p.ban_length(n).as_secs() / 3600).collect();
    assert_eq!(hours, vec![1, 2, 4, 8, 16, 24, 24, 24]);
    assert_eq!(p.ban_length(u16::MAX).as_secs(), 86_400);
}

#[test]
fn every_reason_is_listed_at_its_index() {
    for (i, r) in Reason::ALL.iter().enumerate() {
        assert_eq!(*r as usize, i, "{r:?}");
    }
    // A reason added after Martian must be added to ALL too.
    assert_eq!(Reason::Martian as usize + 1, Reason::ALL.len());
}

#[test]
fn own_addresses_are_found_in_the_slots_and_beyond_them() {
    let p = Policy::new(Config::default());
    let many: Vec<std::net::IpAddr> =
        (1..=40u8).map(|i| std::net::IpAddr::from([198, 18, 7, i])).collect();
    p.set_local(many.clone());
    assert!(many.iter().all(|ip| p.is_local(*ip)), "all 40, past the 32 slots");
    assert!(!p.is_local(std::net::IpAddr::from([198, 18, 7, 41])));
    let v6: std::net::IpAddr = "fd5c:a11:1::1".parse().unwrap();
    p.set_local(vec![v6]);
    assert!(p.is_local(v6) && !p.is_local(many[0]), "a new list replaces the old");
    assert!(!p.bannable(v6) && p.bannable(many[0]));
}
