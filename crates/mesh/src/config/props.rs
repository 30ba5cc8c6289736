//! Property tests of the settings parser: any text in a setting or a `*_FILE` secret never
//! panics, and what is accepted is usable.
use super::*;
use proptest::prelude::*;
use secrecy::ExposeSecret;

fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        // PROPTEST_CASES (the long run) wins over the short run.
        ..ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(256),
        )
    }
}

fn duration_like() -> impl Strategy<Value = String> {
    let unit = prop::sample::select(vec!["ms", "s", "m", "h", "", "d", "µs", " s", "S"]);
    prop_oneof![
        (any::<u64>(), unit.clone()).prop_map(|(n, u)| format!("{n}{u}")),
        (0u64..100_000, unit).prop_map(|(n, u)| format!("{n}{u}")),
        "[0-9]{0,25}[a-zµ ]{0,3}",
        any::<String>(),
    ]
}

const VARS: [&str; 9] = [
    "ORCH_TRUST_DOMAIN",
    "ORCH_LISTEN_ADDR",
    "ORCH_ADMIN_ADDR",
    "ORCH_LOG_FORMAT",
    "ORCH_TLS_RELOAD_INTERVAL",
    "ORCH_MAX_CONNECTION_AGE",
    "ORCH_POLICY_FILE",
    "VAULT_MASTER_KEY",
    "GITHUB_APP_PRIVATE_KEY_FILE",
];

proptest! {
    #![proptest_config(config())]

    #[test]
    fn prop_accepted_durations_fit_a_clock(raw in duration_like()) {
        let env = Env::from_pairs([("D", raw.as_str())]);
        if let Ok(d) = env.duration("D", Duration::ZERO) {
            // What an interval does on its second tick: now + 2 periods.
            prop_assert!(std::time::Instant::now().checked_add(d.saturating_mul(2)).is_some());
            // An empty value is unset: the default.
            prop_assert_eq!(Some(d), if raw.is_empty() { Some(Duration::ZERO) } else { parse_duration(&raw) });
        }
        if let Ok(d) = env.seconds("D", Duration::ZERO) {
            prop_assert!(std::time::Instant::now().checked_add(d.saturating_mul(2)).is_some());
        }
        if let Ok(n) = env.positive::<i64>("D", 1) {
            prop_assert!(n > 0);
        }
        if let Ok(n) = env.positive::<usize>("D", 1) {
            prop_assert!(n > 0);
        }
    }

    #[test]
    fn prop_mesh_settings_never_panic(
        values in proptest::collection::vec((0..VARS.len(), "\\PC{0,30}|[0-9.:]{0,20}"), 0..6),
        service in 0..Service::ALL.len(),
    ) {
        let env = Env::from_pairs(values.iter().map(|(i, v)| (VARS[*i], v.clone())));
        if let Err(e) = MeshConfig::from_env(Service::ALL[service], &env) {
            let text = e.to_string();
            prop_assert!(VARS.iter().any(|v| text.contains(v)), "{text}");
        }
    }

    #[test]
    fn prop_secret_files_round_trip(
        value in "\\PC{0,64}",
        bytes in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s");
        let env = Env::from_pairs([("S_FILE", file.display().to_string())]);
        std::fs::write(&file, format!("{value}\n")).unwrap();
        let read = env.required_secret("S").unwrap();
        prop_assert_eq!(read.expose_secret(), value.strip_suffix('\r').unwrap_or(&value));
        std::fs::write(&file, &bytes).unwrap();
        match env.secret("S") {
            Ok(Some(s)) => prop_assert!(std::str::from_utf8(&bytes).unwrap().starts_with(s.expose_secret())),
            Ok(None) => prop_assert!(false, "a set *_FILE reads as unset"),
            Err(e) => prop_assert!(matches!(e, ConfigError::Unreadable { .. }), "{e}"),
        }
    }
}
