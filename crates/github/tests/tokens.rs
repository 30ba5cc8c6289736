//! The client's installation tokens against the GitHub emulator (which enforces GitHub's
//! rules): a cached token GitHub stops taking is replaced once, and a token is revoked by the
//! one holding it.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use orchestrator_github::{AppAuth, GitHub, GitHubError, RepoRef, RetryPolicy};
use orchestrator_github_emulator::testing::{APP_ID, ORG, app_key, trusting_test_app};
use orchestrator_github_emulator::{Config, Emulator};
use secrecy::SecretString;

async fn setup() -> (Emulator, GitHub, u64) {
    setup_with(Config::default()).await
}

async fn setup_with(config: Config) -> (Emulator, GitHub, u64) {
    let emu = Emulator::start(trusting_test_app(config)).await.unwrap();
    let installation = emu.install(ORG);
    emu.create_repository(ORG, "app");
    let app = AppAuth::from_pem(APP_ID, &SecretString::from(app_key().0.clone())).unwrap();
    let github = GitHub::new(&emu.url(), app, RetryPolicy::default()).unwrap();
    (emu, github, installation)
}

#[tokio::test]
async fn a_cached_token_github_refuses_is_replaced_once() {
    let (emu, github, installation) = setup().await;
    let repo = RepoRef::new(ORG, "app").unwrap();
    let (old, minted) = github
        .token(installation, &["app"], &[("secrets", "write")])
        .await
        .unwrap();
    assert!(minted);
    github.list_secrets(&old.token, &repo).await.unwrap();

    // GitHub stops taking it long before its recorded expiry (revoked elsewhere, say).
    emu.expire_tokens();
    github.list_secrets(&old.token, &repo).await.unwrap();
    let mints = emu.stats().token_mints;
    assert_eq!(mints.len(), 2, "one new token for the refused one");
    assert_eq!(mints[1].repositories, vec!["app".to_owned()]);
    assert_eq!(
        mints[1].granted_permissions,
        [("secrets".to_owned(), "write".to_owned())].into()
    );

    // Another holder of the old token gets the same new one, and the cache serves it.
    github.list_secrets(&old.token, &repo).await.unwrap();
    let (cached, minted) = github
        .token(installation, &["app"], &[("secrets", "write")])
        .await
        .unwrap();
    assert!(!minted);
    github.list_secrets(&cached.token, &repo).await.unwrap();
    assert_eq!(emu.stats().token_mints.len(), 2);
}

#[tokio::test]
async fn a_token_is_revoked_by_its_holder_and_then_refused() {
    let (emu, github, installation) = setup().await;
    let repo = RepoRef::new(ORG, "app").unwrap();
    let handed = github
        .mint_uncached(installation, &["app"], &[("contents", "read")])
        .await
        .unwrap();
    // The holder needs no App key: the token authenticates its own revocation.
    let holder = GitHub::with_tokens_only(&emu.url(), RetryPolicy::default()).unwrap();
    assert!(
        holder
            .repository(&handed.token, &repo)
            .await
            .unwrap()
            .is_some()
    );
    assert!(holder.revoke_token(&handed.token).await.unwrap());
    assert!(emu.stats().token_mints[0].revoked);

    // A second use fails (a handed-over token is not replaced), and so does a second revoke.
    let refused = holder.repository(&handed.token, &repo).await.unwrap_err();
    assert!(
        matches!(refused, GitHubError::Status { status: 401, .. }),
        "{refused:?}"
    );
    let refused = github.repository(&handed.token, &repo).await.unwrap_err();
    assert!(matches!(refused, GitHubError::Status { status: 401, .. }));
    assert!(!holder.revoke_token(&handed.token).await.unwrap());
    assert_eq!(emu.stats().token_mints.len(), 1, "nothing re-minted");
}

#[tokio::test]
async fn handed_over_tokens_are_never_shared_nor_the_cached_one() {
    let (_emu, github, installation) = setup().await;
    let (cached, _) = github
        .token(installation, &[], &[("administration", "write")])
        .await
        .unwrap();
    let (a, b) = tokio::join!(
        github.mint_uncached(installation, &[], &[("administration", "write")]),
        github.mint_uncached(installation, &[], &[("administration", "write")]),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    use secrecy::ExposeSecret as _;
    let values = [
        cached.token.expose_secret(),
        a.token.expose_secret(),
        b.token.expose_secret(),
    ];
    assert!(
        values[0] != values[1] && values[0] != values[2] && values[1] != values[2],
        "one token each: revoking one must not end another's job"
    );
    // The cache still serves its own, untouched.
    let (again, minted) = github
        .token(installation, &[], &[("administration", "write")])
        .await
        .unwrap();
    assert!(!minted && again.token.expose_secret() == values[0]);
}

/// The broker's token is cached for its lifetime: a second use within it mints nothing. A
/// token that expires within five minutes is not served from the cache but replaced, so no
/// request starts with a token about to expire. (Fails against a client without a cache, and
/// against one that keeps a token until its very expiry.)
#[tokio::test]
async fn a_cached_token_is_reused_until_five_minutes_before_it_expires() {
    let repo = RepoRef::new(ORG, "app").unwrap();
    // An hour's token: minted once for two pushes' worth of calls.
    let (emu, github, installation) = setup().await;
    for _ in 0..2 {
        let (token, _) = github
            .token(installation, &["app"], &[("secrets", "write")])
            .await
            .unwrap();
        github.list_secrets(&token.token, &repo).await.unwrap();
    }
    assert_eq!(emu.stats().token_mints.len(), 1);

    // Tokens GitHub gives for five minutes only: each is already "five minutes from expiry",
    // so each request gets a new one, and each works.
    let (emu, github, installation) = setup_with(Config {
        token_lifetime: std::time::Duration::from_secs(300),
        ..Config::default()
    })
    .await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        let (token, minted) = github
            .token(installation, &["app"], &[("secrets", "write")])
            .await
            .unwrap();
        assert!(
            minted,
            "a token five minutes from expiry was served from the cache"
        );
        github.list_secrets(&token.token, &repo).await.unwrap();
        use secrecy::ExposeSecret as _;
        seen.push(token.token.expose_secret().to_owned());
    }
    assert_ne!(seen[0], seen[1]);
    assert_eq!(emu.stats().token_mints.len(), 2);

    // Six minutes: cached again.
    let (emu, github, installation) = setup_with(Config {
        token_lifetime: std::time::Duration::from_secs(360),
        ..Config::default()
    })
    .await;
    for _ in 0..2 {
        github
            .token(installation, &["app"], &[("secrets", "write")])
            .await
            .unwrap();
    }
    assert_eq!(emu.stats().token_mints.len(), 1);
}
