//! GSO sends (`outputs.gso`, src/udp.rs `send_all`): the real binary
//! forwards a stream of mixed lengths, with runs of equal-length records
//! long and short, to a unicast and a multicast destination and a
//! decimated one. With GSO on and off the outputs are byte-identical, in
//! order, each record its own datagram, and the counters equal. (The
//! kernel refusing GSO and the fallback are tested in src/udp.rs, on a
//! socket the kernel really refuses.)

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use apache_avro::types::Value;
use serde_json::{Value as Json, json};

use crate::common::*;

/// Record `n` of example.avsc with `pad` more bytes in its message: equal
/// `pad` and digit count give equal lengths.
fn record(n: u64, pad: usize) -> Vec<u8> {
    let s = schema(EXAMPLE_SCHEMA);
    let mut v = example_value(&s, n);
    if let Value::Record(fields) = &mut v {
        for (name, field) in fields.iter_mut() {
            if name == "message" {
                *field = Value::String(format!("record {n} {}", "x".repeat(pad)));
            }
        }
    }
    encode(&s, v)
}

/// Chunks of the stream, each sent at once: lengths all different, runs
/// of 64 and more (small and 1.4 KB), runs cut by the 64 KiB bound
/// (30 KB records: two per send), alternating lengths (no runs).
fn stream() -> Vec<Vec<Vec<u8>>> {
    let mut n = 1000;
    let mut chunk = |pads: &mut dyn Iterator<Item = usize>| {
        pads.map(|pad| {
            n += 1;
            record(n, pad)
        })
        .collect::<Vec<_>>()
    };
    vec![
        chunk(&mut (0..40)),
        chunk(&mut std::iter::repeat_n(0, 64)),
        chunk(&mut std::iter::repeat_n(1300, 64)),
        chunk(&mut std::iter::repeat_n(0, 64)),
        chunk(&mut (0..64).map(|i| (i % 2) * 10)),
        chunk(&mut std::iter::repeat_n(30_000, 5)),
        chunk(&mut [5, 5, 9, 5, 5, 5, 1300, 1300, 0].into_iter()),
    ]
}

/// A listener of `group` on loopback, with a read timeout.
fn multicast_listener(group: Ipv4Addr) -> UdpSocket {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    s.set_reuse_address(true).unwrap();
    let _ = s.set_recv_buffer_size(8 << 20);
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)).into())
        .unwrap();
    s.join_multicast_v4(&group, &Ipv4Addr::LOCALHOST).unwrap();
    let s: UdpSocket = s.into();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// What one channel delivered: full rate at the unicast and the
/// multicast destination, decimated, and its counters.
struct Delivered {
    unicast: Vec<Vec<u8>>,
    multicast: Vec<Vec<u8>>,
    decimated: Vec<Vec<u8>>,
    stats: (Json, Json, Json),
}

fn run(gso: bool, group: Ipv4Addr) -> Delivered {
    let dir = tempfile::tempdir().unwrap();
    let (relay, _) = loopback_relay(dir.path(), 50);
    let (unicast, _) = receiver();
    let (decimated, _) = receiver();
    let multicast = multicast_listener(group);
    let mport = multicast.local_addr().unwrap().port();
    let port = free_port();
    let config = json!({
        "outputs": {
            "gso": gso,
            "full_rate": [
                dest_json(&unicast),
                {"address": group.to_string(), "port": mport, "interface": "127.0.0.1", "ttl": 1, "loop": true},
            ],
            "decimated": dest_json(&decimated),
        },
        // minmax: two records per window, re-encoded, so the decimated
        // output has runs of its own.
        "decimation": {"enabled": true, "factor": 4, "algorithm": "minmax"},
        // A chunk sent at once is one batch (or a few): runs form.
        "socket": {"coalesce_us": 20_000},
    });
    assert_eq!(register_example(relay.api, "g", port, config).0, 201);
    assert_eq!(
        get_channel(relay.api, "g")["config"]["outputs"]["gso"],
        if gso { Json::Null } else { json!(false) },
        "gso is written out only when off"
    );
    let (mut u, mut m, mut d) = (Vec::new(), Vec::new(), Vec::new());
    let mut total = 0;
    for chunk in stream() {
        total += chunk.len();
        send_all(port, &chunk);
        u.extend(recv_n(&unicast, chunk.len()));
        m.extend(recv_n(&multicast, chunk.len()));
        // Windows of 4 only: the decimated records of full windows so far.
        let due = (total / 4) * 2;
        d.extend(recv_n(&decimated, due - d.len()));
    }
    assert_silent(&unicast);
    assert_silent(&multicast);
    let stats = |relay: &RelayProcess| {
        let ch = get_channel(relay.api, "g");
        let s = &ch["stats"];
        (
            s["forwarded"].clone(),
            s["decimated_sent"].clone(),
            s["send_errors"].clone(),
        )
    };
    let mut last = stats(&relay);
    // The counters are added after the sends: wait for them to settle.
    wait_for("the counters", Duration::from_secs(5), || {
        let now = stats(&relay);
        let settled = now == last && now.0 == json!(2 * total);
        last = now;
        settled
    });
    relay.stop();
    Delivered {
        unicast: u,
        multicast: m,
        decimated: d,
        stats: last,
    }
}

#[test]
fn outputs_and_counters_are_the_same_with_gso_on_and_off() {
    if !private_netns_or_skip(
        "multicast is only sent inside a private network namespace (run tests/run.sh)",
    ) {
        return;
    }
    let group = Ipv4Addr::new(239, 255, 10, 16);
    let sent: Vec<Vec<u8>> = stream().concat();
    let on = run(true, group);
    let off = run(false, group);
    for (what, d) in [("on", &on), ("off", &off)] {
        assert_eq!(d.unicast.len(), sent.len(), "gso {what}");
        for (i, (got, want)) in d.unicast.iter().zip(&sent).enumerate() {
            assert!(got == want, "gso {what}: unicast datagram {i} differs");
        }
        assert!(d.multicast == sent, "gso {what}: multicast differs");
    }
    assert!(on.decimated == off.decimated, "decimated output differs");
    assert_eq!(on.decimated.len(), sent.len() / 4 * 2);
    assert_eq!(
        on.stats, off.stats,
        "counters (forwarded, decimated_sent, send_errors)"
    );
    assert_eq!(on.stats.2, json!(0));
}

/// `outputs.gso` is PATCHable like the other outputs, and refused when
/// not a boolean, leaving the channel as it was.
#[test]
fn gso_is_patched_and_bad_values_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, _) = loopback_relay(dir.path(), 50);
    let (out, _) = receiver();
    let port = free_port();
    let config = json!({"outputs": {"full_rate": dest_json(&out)}});
    assert_eq!(register_example(relay.api, "p", port, config).0, 201);
    let (status, body) = patch(relay.api, "p", json!({"outputs": {"gso": "no"}}));
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        get_channel(relay.api, "p")["config"]["outputs"]["gso"],
        Json::Null
    );
    let (status, body) = patch(relay.api, "p", json!({"outputs": {"gso": false}}));
    assert_eq!(status, 200, "{body}");
    let ch = get_channel(relay.api, "p");
    assert_eq!(ch["config"]["outputs"]["gso"], json!(false));
    assert_eq!(
        ch["config"]["outputs"]["full_rate"][0],
        dest_json(&out),
        "{ch}"
    );
    let records = example_range(0, 100);
    send_all(port, &records);
    assert!(recv_n(&out, 100) == records, "forwarded with GSO off");
    relay.stop();
}
