//! ACME certificates for the federation bundle endpoint's `https_web` profile, and for the
//! OIDC Discovery Provider's `acme { }` section (one manager per domain there).
//!
//! Upstream SPIRE serves `federation { bundle_endpoint { profile "https_web" { acme { .. } } } }`
//! (and the deprecated `bundle_endpoint { acme { .. } }`) with a fork of Go's autocert
//! (`pkg/server/endpoints/bundle/internal/autocert`): the tls-alpn-01 challenge is answered on
//! the bundle endpoint's own TLS listener, only `domain_name` gets a certificate, and the
//! certificate is cached in `<data_dir>/bundle-acme` and renewed before it expires.
//! [`AcmeManager`] does the same with the `instant-acme` client:
//!
//! - it is the listener's [`ResolvesServerCert`]: a handshake that offers only the ALPN
//!   protocol `acme-tls/1` gets the challenge certificate of a validation in progress, any
//!   other handshake with SNI `domain_name` gets the current certificate, and every other
//!   handshake gets none, so it fails (upstream's `HostWhitelist`);
//! - [`AcmeManager::run`] obtains the certificate at start unless the cache holds a fresh one
//!   (upstream waits for the first handshake), renews it once less than a third of its
//!   lifetime or less than 30 days are left, whichever comes first (autocert renews 30 days
//!   before expiry, which would mean at once for certificates shorter than that), and retries
//!   with a doubling backoff, 1 s to 15 min, while the ACME server is away or refuses;
//! - the cache folder (created 0700) holds, each written atomically with mode 0600:
//!   `<domain>`, the chain as PEM (upstream's file and format); `<domain>+key`, its PKCS#8
//!   key; and `acme_account.json`, the ACME account and its key. Upstream keeps both keys in
//!   the server's KeyManager (ids `bundle-acme-<id>`) instead.
//!
//! Certificate keys are ECDSA P-256 (upstream also obtains an RSA one for clients that cannot
//! do ECDSA). The Terms of Service of an ACME server that has some are accepted only when
//! `tos_accepted = true`; otherwise no account is created and no certificate obtained.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant, SystemTime};

use hyper::body::Bytes;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, ChallengeType, HttpClient,
    Identifier, NewAccount, NewOrder, Order, OrderStatus, RetryPolicy,
};
use rcgen::{CertificateParams, CustomExtension, DistinguishedName, DnType, KeyPair};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer as _;
use zeroize::Zeroizing;

/// Let's Encrypt's production directory: upstream's default when `directory_url` is unset.
pub const LETS_ENCRYPT_DIRECTORY_URL: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// The ALPN protocol of tls-alpn-01 validations (RFC 8737). The bundle endpoint's TLS
/// listener must offer it (see [`alpn_protocols`]), and a connection that negotiated it
/// carries no application data: close it after the handshake ([`is_challenge_connection`]).
pub const ACME_TLS_ALPN_PROTOCOL: &[u8] = b"acme-tls/1";

/// The name of the cache folder inside the server's `data_dir`, as upstream names it.
pub const CACHE_DIR_NAME: &str = "bundle-acme";

/// Renew no earlier than this before expiry (autocert's `RenewBefore` default).
const MAX_RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// First wait after a failed attempt; doubled after each further failure.
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between failed attempts: at most four failed validations an hour, under Let's
/// Encrypt's limit of five per account and host name.
const RETRY_MAX: Duration = Duration::from_secs(15 * 60);
/// Longest sleep of the renewal loop, so a clock jump or a certificate another server put in
/// the shared cache is noticed within the hour.
const MAX_SLEEP: Duration = Duration::from_secs(3600);
/// The most one attempt (account, order, validation, issuance) may take, as upstream's
/// handshake-time attempts.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// How long to wait for the ACME server to validate a challenge or to issue a certificate.
const POLL_TIMEOUT: Duration = Duration::from_secs(2 * 60);
/// Clock difference between us and the ACME server tolerated on a new certificate's start.
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);
/// Problem type of an account the ACME server does not know (any more).
const ACCOUNT_DOES_NOT_EXIST: &str = "urn:ietf:params:acme:error:accountDoesNotExist";
/// The account file in the cache folder.
const ACCOUNT_FILE: &str = "acme_account.json";

/// What the bundle endpoint's `acme { }` block says, plus where to cache.
#[derive(Clone, Debug, Default)]
pub struct AcmeConfig {
    /// The ACME server's directory; empty means [`LETS_ENCRYPT_DIRECTORY_URL`], as upstream.
    pub directory_url: String,
    /// The one host name a certificate is obtained and served for.
    pub domain_name: String,
    /// The ACME account's contact address (`mailto:`), so the CA can warn about problems
    /// with issued certificates; empty means none.
    pub email: String,
    /// Whether the operator accepted the ACME server's Terms of Service; without it no
    /// account is created at a server that has some.
    pub tos_accepted: bool,
    /// Where certificates and the account are kept across restarts: `<data_dir>/bundle-acme`
    /// (see [`CACHE_DIR_NAME`]).
    pub cache_dir: PathBuf,
    /// PEM certificates trusted for the ACME directory's HTTPS besides the system's roots: a
    /// test CA such as Pebble's; `None` in production.
    pub extra_root_cas_pem: Option<String>,
}

/// Why no certificate could be obtained, or the manager not built; each message names what to
/// look at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcmeError {
    /// The `acme { }` block is not usable.
    #[error("invalid ACME configuration: {0}")]
    Config(String),
    /// The cache folder or one of its files could not be created, read or written.
    #[error("ACME cache {}: {source}", path.display())]
    Cache {
        /// The folder or file.
        path: PathBuf,
        /// What the filesystem said.
        #[source]
        source: std::io::Error,
    },
    /// The HTTPS client for the ACME server could not be set up.
    #[error("TLS set-up of the ACME client: {0}")]
    Tls(String),
    /// The ACME server has Terms of Service and `tos_accepted` is not true.
    #[error(
        "the ACME server at {directory_url} requires accepting its Terms of Service \
         ({tos_url}), which are not accepted: set tos_accepted = true in the bundle endpoint's \
         acme block to accept them"
    )]
    TermsOfServiceNotAccepted {
        /// The ACME directory.
        directory_url: String,
        /// Where the Terms of Service are.
        tos_url: String,
    },
    /// A request to the ACME server failed: unreachable, refused, or an error document.
    #[error("ACME server at {directory_url}: {step} failed: {message}")]
    Server {
        /// The ACME directory.
        directory_url: String,
        /// What was being done.
        step: &'static str,
        /// The error and its causes.
        message: String,
    },
    /// The ACME server could not validate the tls-alpn-01 challenge.
    #[error(
        "the ACME server at {directory_url} did not validate the tls-alpn-01 challenge for \
         {domain}: {detail}"
    )]
    Challenge {
        /// The ACME directory.
        directory_url: String,
        /// The domain being validated.
        domain: String,
        /// What the server said.
        detail: String,
    },
    /// The ACME server issued something that cannot be served.
    #[error("the certificate from the ACME server at {directory_url} is unusable: {reason}")]
    BadCertificate {
        /// The ACME directory.
        directory_url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A key, CSR or challenge certificate could not be made.
    #[error("ACME key or certificate generation: {0}")]
    Crypto(String),
    /// One attempt took longer than allowed.
    #[error("no certificate from the ACME server at {directory_url} within {timeout:?}")]
    Timeout {
        /// The ACME directory.
        directory_url: String,
        /// The time allowed.
        timeout: Duration,
    },
}

/// The ALPN protocols a bundle endpoint served with ACME certificates offers, upstream's
/// (autocert's `TLSConfig`): `h2`, `http/1.1` and [`ACME_TLS_ALPN_PROTOCOL`]. Drop `h2` when
/// the HTTP server behind the listener speaks only HTTP/1.1; `acme-tls/1` must stay or the
/// challenge cannot be validated.
pub fn alpn_protocols() -> Vec<Vec<u8>> {
    vec![
        b"h2".to_vec(),
        b"http/1.1".to_vec(),
        ACME_TLS_ALPN_PROTOCOL.to_vec(),
    ]
}

/// Whether a connection whose handshake negotiated `negotiated_alpn` was an ACME server's
/// tls-alpn-01 validation, which must be closed without serving HTTP (RFC 8737 section 3).
pub fn is_challenge_connection(negotiated_alpn: Option<&[u8]>) -> bool {
    negotiated_alpn == Some(ACME_TLS_ALPN_PROTOCOL)
}

/// The HTTPS client instant-acme talks to the ACME server through.
type HttpsClient = HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>;

/// Obtains, renews and serves the bundle endpoint's certificate for one domain from an ACME
/// server; see the module documentation.
pub struct AcmeManager {
    directory_url: String,
    domain: String,
    contact: Vec<String>,
    tos_accepted: bool,
    cache: Cache,
    provider: Arc<CryptoProvider>,
    http: HttpsClient,
    /// The certificate served for `domain`.
    issued: RwLock<Option<Issued>>,
    /// tls-alpn-01 certificates of validations in progress, by domain.
    challenges: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    /// The ACME account once registered or restored; the lock also keeps attempts one at a
    /// time.
    account: tokio::sync::Mutex<Option<Account>>,
}

impl fmt::Debug for AcmeManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcmeManager")
            .field("directory_url", &self.directory_url)
            .field("domain", &self.domain)
            .field("cache_dir", &self.cache.dir)
            .finish_non_exhaustive()
    }
}

impl AcmeManager {
    /// Checks `config`, creates the cache folder and loads a cached certificate that is still
    /// valid, so the endpoint serves it at once. Nothing is asked of the ACME server before
    /// [`AcmeManager::run`].
    pub fn new(config: AcmeConfig) -> Result<Arc<Self>, AcmeError> {
        let directory_url = match config.directory_url.trim() {
            "" => LETS_ENCRYPT_DIRECTORY_URL.to_owned(),
            url => url.to_owned(),
        };
        if !directory_url.starts_with("https://") {
            return Err(AcmeError::Config(format!(
                "directory_url {directory_url:?} is not an https:// URL (ACME requires HTTPS)"
            )));
        }
        let domain = check_domain(&config.domain_name)?;
        let email = config.email.trim();
        let contact = if email.is_empty() {
            Vec::new()
        } else {
            vec![format!("mailto:{email}")]
        };
        if !config.tos_accepted {
            tracing::warn!(
                directory_url = %directory_url,
                "ACME Terms of Service have not been accepted. See the `tos_accepted` configurable"
            );
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let http = https_client(&provider, config.extra_root_cas_pem.as_deref())?;
        let cache = Cache::new(config.cache_dir, &domain)?;
        let manager = Self {
            directory_url,
            domain,
            contact,
            tos_accepted: config.tos_accepted,
            cache,
            provider,
            http,
            issued: RwLock::new(None),
            challenges: RwLock::new(HashMap::new()),
            account: tokio::sync::Mutex::new(None),
        };
        if let Some(cached) =
            manager
                .cache
                .load_certificate(&manager.domain, SystemTime::now(), &manager.provider)
        {
            manager.install(cached, "Using the cached ACME certificate");
        }
        Ok(Arc::new(manager))
    }

    /// A TLS server configuration for the bundle endpoint: this manager as the certificate
    /// resolver, no client certificates, and the ALPN protocols of [`alpn_protocols`].
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, AcmeError> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| AcmeError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = alpn_protocols();
        Ok(config)
    }

    /// The leaf certificate served now, if there is one: for status output and tests.
    pub fn certificate(&self) -> Option<CertificateDer<'static>> {
        read(&self.issued)
            .as_ref()
            .and_then(|issued| issued.key.cert.first().cloned())
    }

    /// Keeps a certificate for the domain until `cancel` fires: obtains one now unless a fresh
    /// one is cached, renews it once [`renew_at`] has come, and after a failure (the ACME
    /// server away, a validation refused) logs it with the directory URL and retries with a
    /// doubling backoff. When the Terms of Service are not accepted it logs why and only
    /// waits for `cancel`: that needs a configuration change.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut backoff = Backoff::new();
        loop {
            let wait = match self.renewal_due_in(SystemTime::now()) {
                Some(wait) => wait,
                None => {
                    let attempt = tokio::select! {
                        () = cancel.cancelled() => return,
                        attempt = tokio::time::timeout(ATTEMPT_TIMEOUT, self.obtain_certificate()) => attempt,
                    };
                    match self.after_attempt(attempt, &mut backoff) {
                        Some(wait) => wait,
                        None => {
                            cancel.cancelled().await;
                            return;
                        }
                    }
                }
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(wait.min(MAX_SLEEP)) => {}
            }
        }
    }

    /// What [`AcmeManager::run`] does after an attempt: how long to wait before looking
    /// again, with the failure logged, or `None` when only a configuration change can help.
    fn after_attempt(
        &self,
        attempt: Result<Result<(), AcmeError>, tokio::time::error::Elapsed>,
        backoff: &mut Backoff,
    ) -> Option<Duration> {
        let error = match attempt {
            Ok(Ok(())) => {
                if let Some(wait) = self.renewal_due_in(SystemTime::now()) {
                    backoff.reset();
                    return Some(wait);
                }
                // Due for renewal as soon as issued (a lifetime shorter than the CA's
                // backdating, say): no tight loop.
                let delay = backoff.next();
                tracing::warn!(
                    directory_url = %self.directory_url,
                    domain_name = %self.domain,
                    retry_in = ?delay,
                    "The new ACME certificate is already due for renewal"
                );
                return Some(delay);
            }
            Ok(Err(error)) => error,
            Err(_) => AcmeError::Timeout {
                directory_url: self.directory_url.clone(),
                timeout: ATTEMPT_TIMEOUT,
            },
        };
        if let AcmeError::TermsOfServiceNotAccepted { .. } = error {
            tracing::error!(
                directory_url = %self.directory_url,
                domain_name = %self.domain,
                error = %error,
                "No ACME certificate will be obtained until the configuration changes"
            );
            return None;
        }
        let delay = backoff.next();
        tracing::warn!(
            directory_url = %self.directory_url,
            domain_name = %self.domain,
            error = %error,
            retry_in = ?delay,
            "Could not obtain an ACME certificate; retrying"
        );
        Some(delay)
    }

    /// One attempt, as [`AcmeManager::run`] makes them: takes a cached certificate that is not
    /// yet due for renewal (another server sharing the cache may have renewed it), or else
    /// orders a new one, answering the tls-alpn-01 challenge on the listener this manager
    /// resolves certificates for, and caches and serves it.
    pub async fn obtain_certificate(&self) -> Result<(), AcmeError> {
        let mut account = self.account.lock().await;
        let now = SystemTime::now();
        if let Some(cached) = self
            .cache
            .load_certificate(&self.domain, now, &self.provider)
            .filter(|cached| now < cached.renew_at())
        {
            if !self.serves(&cached) {
                self.install(cached, "Using the ACME certificate found in the cache");
            }
            return Ok(());
        }

        let started = Instant::now();
        let has_terms = self.check_terms_of_service().await?;
        let known = match account.take() {
            Some(known) => known,
            None => match self.restore_account().await? {
                Some(restored) => restored,
                None => self.register(has_terms).await?,
            },
        };
        let known = account.insert(known);
        let ordered = match self.order(known).await {
            Err(OrderError::UnknownAccount) => {
                tracing::info!(
                    directory_url = %self.directory_url,
                    "The ACME server does not know the cached account; registering a new one"
                );
                self.cache.remove_account();
                let fresh = account.insert(self.register(has_terms).await?);
                self.order(fresh).await
            }
            other => other,
        };
        let (chain_pem, key) = ordered.map_err(|e| e.into_acme(&self.directory_url))?;

        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let issued = certified(
            chain_pem.as_bytes(),
            key_der,
            &self.domain,
            SystemTime::now(),
            &self.provider,
        )
        .map_err(|reason| AcmeError::BadCertificate {
            directory_url: self.directory_url.clone(),
            reason,
        })?;
        let key_pem = Zeroizing::new(key.serialize_pem());
        // Served even when it cannot be cached: ordering again at every attempt would run
        // into the CA's limits on duplicate certificates.
        if let Err(e) = self
            .cache
            .store_certificate(chain_pem.as_bytes(), key_pem.as_bytes())
        {
            tracing::warn!(
                error = %e,
                "Could not cache the new ACME certificate; a restart will order another one"
            );
        }
        tracing::info!(
            directory_url = %self.directory_url,
            elapsed = ?started.elapsed(),
            "Obtained a certificate from the ACME server"
        );
        self.install(issued, "Serving the new ACME certificate");
        Ok(())
    }

    /// How long until the served certificate is due for renewal; `None` when there is none
    /// or it is due now.
    fn renewal_due_in(&self, now: SystemTime) -> Option<Duration> {
        let renew_at = read(&self.issued).as_ref()?.renew_at();
        renew_at
            .duration_since(now)
            .ok()
            .filter(|wait| !wait.is_zero())
    }

    /// Whether `issued` is the certificate served now.
    fn serves(&self, issued: &Issued) -> bool {
        read(&self.issued)
            .as_ref()
            .is_some_and(|current| current.key.cert == issued.key.cert)
    }

    /// Serves `issued` from now on.
    fn install(&self, issued: Issued, message: &str) {
        let leaf = issued
            .key
            .cert
            .first()
            .and_then(|der| x509_parser::certificate::X509Certificate::from_der(der).ok())
            .map(|(_, leaf)| leaf.raw_serial_as_string())
            .unwrap_or_default();
        tracing::info!(
            domain_name = %self.domain,
            serial = %leaf,
            not_after = %humantime_utc(issued.not_after),
            renew_at = %humantime_utc(issued.renew_at()),
            "{message}"
        );
        *write(&self.issued) = Some(issued);
    }

    /// Reads the directory and, when the server has Terms of Service, refuses to go on
    /// unless they are accepted. Returns whether there are some.
    async fn check_terms_of_service(&self) -> Result<bool, AcmeError> {
        let server_error = |message: String| AcmeError::Server {
            directory_url: self.directory_url.clone(),
            step: "reading the directory",
            message,
        };
        let request = http::Request::get(&self.directory_url)
            .header(http::header::USER_AGENT, USER_AGENT)
            .body(BodyWrapper::default())
            .map_err(|e| server_error(e.to_string()))?;
        let mut response = HttpClient::request(&self.http, request)
            .await
            .map_err(|e| server_error(error_chain(&e)))?;
        let status = response.parts.status;
        let body = response
            .body
            .into_bytes()
            .await
            .map_err(|e| server_error(error_chain(e.as_ref())))?;
        if !status.is_success() {
            return Err(server_error(format!("HTTP status {status}")));
        }
        let tos_url = terms_of_service(&body).map_err(server_error)?;
        let Some(tos_url) = tos_url else {
            return Ok(false);
        };
        if !self.tos_accepted {
            tracing::warn!(
                directory_url = %self.directory_url,
                tos_url = %tos_url,
                email = %self.contact.join(","),
                "ACME Terms of Service have not been accepted. See the `tos_accepted` configurable"
            );
            return Err(AcmeError::TermsOfServiceNotAccepted {
                directory_url: self.directory_url.clone(),
                tos_url,
            });
        }
        Ok(true)
    }

    /// The account in the cache, if there is one for this directory whose key loads; updates
    /// its contact when `email` changed. An unreachable server is an error, not a reason to
    /// register again.
    async fn restore_account(&self) -> Result<Option<Account>, AcmeError> {
        let Some(stored) = self.cache.load_account() else {
            return Ok(None);
        };
        if stored.directory_url != self.directory_url {
            tracing::info!(
                cached = %stored.directory_url,
                directory_url = %self.directory_url,
                "The cached ACME account belongs to another directory; registering a new one"
            );
            return Ok(None);
        }
        let credentials =
            match serde_json::from_value::<AccountCredentials>(stored.credentials.clone()) {
                Ok(credentials) => credentials,
                Err(e) => {
                    tracing::warn!(
                        path = %self.cache.account.display(),
                        error = %e,
                        "Cached ACME account does not parse; registering a new one"
                    );
                    return Ok(None);
                }
            };
        let account = match self.account_builder().from_credentials(credentials).await {
            Ok(account) => account,
            Err(e @ (instant_acme::Error::KeyRejected | instant_acme::Error::Crypto)) => {
                tracing::warn!(
                    path = %self.cache.account.display(),
                    error = %error_chain(&e),
                    "Cached ACME account key is unusable; registering a new one"
                );
                return Ok(None);
            }
            Err(e) => return Err(self.server_error("reading the directory", &e)),
        };
        if stored.contact != self.contact {
            let contact: Vec<&str> = self.contact.iter().map(String::as_str).collect();
            match account.update_contacts(&contact).await {
                Ok(()) => self.store_account(StoredAccount {
                    contact: self.contact.clone(),
                    ..stored
                }),
                Err(e) => tracing::warn!(
                    directory_url = %self.directory_url,
                    error = %error_chain(&e),
                    "Could not update the ACME account's contact"
                ),
            }
        }
        Ok(Some(account))
    }

    /// Registers a new account (agreeing to the Terms of Service when the server has some:
    /// [`Self::check_terms_of_service`] made sure they are accepted) and caches it.
    async fn register(&self, has_terms: bool) -> Result<Account, AcmeError> {
        let contact: Vec<&str> = self.contact.iter().map(String::as_str).collect();
        let new_account = NewAccount {
            contact: &contact,
            terms_of_service_agreed: has_terms && self.tos_accepted,
            only_return_existing: false,
        };
        let (account, credentials) = self
            .account_builder()
            .create(&new_account, self.directory_url.clone(), None)
            .await
            .map_err(|e| self.server_error("registering an account", &e))?;
        if has_terms {
            tracing::info!(directory_url = %self.directory_url, "ACME Terms of Service accepted");
        }
        tracing::info!(
            directory_url = %self.directory_url,
            account = %account.id(),
            "Registered an ACME account"
        );
        match serde_json::to_value(&credentials) {
            Ok(credentials) => self.store_account(StoredAccount {
                directory_url: self.directory_url.clone(),
                contact: self.contact.clone(),
                credentials,
            }),
            Err(e) => tracing::warn!(error = %e, "Could not cache the ACME account"),
        }
        Ok(account)
    }

    /// Writes the account to the cache; a failure only costs a new registration next start.
    fn store_account(&self, stored: StoredAccount) {
        if let Err(e) = self.cache.store_account(&stored) {
            tracing::warn!(error = %e, "Could not cache the ACME account");
        }
    }

    fn account_builder(&self) -> instant_acme::AccountBuilder {
        Account::builder_with_http(Box::new(self.http.clone()))
    }

    /// Orders a certificate for the domain: answers the tls-alpn-01 challenge, then sends a
    /// CSR for a new P-256 key. Returns the chain (PEM) and the key.
    async fn order(&self, account: &Account) -> Result<(String, KeyPair), OrderError> {
        let identifiers = [Identifier::Dns(self.domain.clone())];
        let mut order = match account.new_order(&NewOrder::new(&identifiers)).await {
            Ok(order) => order,
            Err(instant_acme::Error::Api(problem))
                if problem.r#type.as_deref() == Some(ACCOUNT_DOES_NOT_EXIST) =>
            {
                return Err(OrderError::UnknownAccount);
            }
            Err(e) => return Err(self.server_error("creating an order", &e).into()),
        };

        // Held until the server has validated: dropping them withdraws the certificates.
        let mut challenges = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization =
                authorization.map_err(|e| self.server_error("reading an authorization", &e))?;
            match authorization.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                status => {
                    return Err(self
                        .challenge_error(format!("the authorization is {status:?}"))
                        .into());
                }
            }
            let Some(mut challenge) = authorization.challenge(ChallengeType::TlsAlpn01) else {
                return Err(self
                    .challenge_error("the server offers no tls-alpn-01 challenge".to_owned())
                    .into());
            };
            let certificate = challenge_certificate(
                &self.domain,
                challenge.key_authorization().digest().as_ref(),
                &self.provider,
            )?;
            challenges.push(ChallengeCertificate::put(self, certificate));
            challenge
                .set_ready()
                .await
                .map_err(|e| self.server_error("accepting the tls-alpn-01 challenge", &e))?;
        }

        let polling = RetryPolicy::new().timeout(POLL_TIMEOUT);
        let status = order
            .poll_ready(&polling)
            .await
            .map_err(|e| self.challenge_error(error_chain(&e)))?;
        drop(challenges);
        if status != OrderStatus::Ready {
            let detail = authorization_errors(&mut order).await;
            return Err(self.challenge_error(detail).into());
        }

        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| AcmeError::Crypto(format!("generating the certificate key: {e}")))?;
        let csr = certificate_request(&self.domain, &key)?;
        order
            .finalize_csr(&csr)
            .await
            .map_err(|e| self.server_error("finalizing the order", &e))?;
        let chain = order
            .poll_certificate(&polling)
            .await
            .map_err(|e| self.server_error("downloading the certificate", &e))?;
        Ok((chain, key))
    }

    fn server_error(&self, step: &'static str, error: &instant_acme::Error) -> AcmeError {
        AcmeError::Server {
            directory_url: self.directory_url.clone(),
            step,
            message: error_chain(error),
        }
    }

    fn challenge_error(&self, detail: String) -> AcmeError {
        AcmeError::Challenge {
            directory_url: self.directory_url.clone(),
            domain: self.domain.clone(),
            detail,
        }
    }
}

impl ResolvesServerCert for AcmeManager {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(server_name) = client_hello.server_name() else {
            tracing::debug!(
                domain_name = %self.domain,
                "TLS handshake without a server name (SNI): no ACME certificate"
            );
            return None;
        };
        let name = normalize_name(server_name);
        if wants_challenge(client_hello.alpn()) {
            let certificate = read(&self.challenges).get(&name).cloned();
            if certificate.is_none() {
                tracing::debug!(server_name = %name, "No tls-alpn-01 challenge in progress");
            }
            return certificate;
        }
        if name != self.domain {
            tracing::debug!(
                server_name = %name,
                domain_name = %self.domain,
                "TLS handshake for a name the ACME certificate is not for: refused"
            );
            return None;
        }
        let certificate = read(&self.issued).as_ref().map(|issued| issued.key.clone());
        if certificate.is_none() {
            tracing::debug!(domain_name = %self.domain, "No ACME certificate yet");
        }
        certificate
    }
}

/// Why an order failed: the account is unknown to the server (registered again and retried
/// once), or anything else.
enum OrderError {
    UnknownAccount,
    Other(AcmeError),
}

impl OrderError {
    fn into_acme(self, directory_url: &str) -> AcmeError {
        match self {
            Self::UnknownAccount => AcmeError::Server {
                directory_url: directory_url.to_owned(),
                step: "creating an order",
                message: "the server does not know the newly registered account".to_owned(),
            },
            Self::Other(e) => e,
        }
    }
}

impl From<AcmeError> for OrderError {
    fn from(e: AcmeError) -> Self {
        Self::Other(e)
    }
}

/// A challenge certificate served while it lives.
struct ChallengeCertificate<'a> {
    manager: &'a AcmeManager,
}

impl<'a> ChallengeCertificate<'a> {
    fn put(manager: &'a AcmeManager, certificate: Arc<CertifiedKey>) -> Self {
        write(&manager.challenges).insert(manager.domain.clone(), certificate);
        Self { manager }
    }
}

impl Drop for ChallengeCertificate<'_> {
    fn drop(&mut self) {
        write(&self.manager.challenges).remove(&self.manager.domain);
    }
}

/// The errors the server recorded on the order's authorizations, for the log.
async fn authorization_errors(order: &mut Order) -> String {
    let mut details = Vec::new();
    if let Some(problem) = &order.state().error {
        details.push(problem.to_string());
    }
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let Ok(mut authorization) = authorization else {
            continue;
        };
        let Ok(state) = authorization.refresh().await else {
            continue;
        };
        details.extend(
            state
                .challenges
                .iter()
                .filter_map(|challenge| challenge.error.as_ref())
                .map(ToString::to_string),
        );
    }
    if details.is_empty() {
        "the order became invalid".to_owned()
    } else {
        details.join("; ")
    }
}

/// A certificate with the dates that decide its renewal.
#[derive(Clone, Debug)]
struct Issued {
    key: Arc<CertifiedKey>,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl Issued {
    fn renew_at(&self) -> SystemTime {
        renew_at(self.not_before, self.not_after)
    }
}

/// When a certificate valid from `not_before` to `not_after` is renewed: once less than a
/// third of its lifetime, or less than 30 days, are left, whichever comes first. A 90-day
/// certificate is renewed after 60 days, a 6-day one after 4.
pub fn renew_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    let before = (lifetime / 3).min(MAX_RENEW_BEFORE);
    not_after.checked_sub(before).unwrap_or(not_before)
}

/// Builds the served certificate from a PEM chain and its key, checking what upstream's
/// `validCert` checks: the leaf is valid now, names `domain`, and matches the key.
fn certified(
    chain_pem: &[u8],
    key: PrivateKeyDer<'static>,
    domain: &str,
    now: SystemTime,
    provider: &CryptoProvider,
) -> Result<Issued, String> {
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the chain is not PEM certificates: {e}"))?;
    let leaf_der = chain.first().ok_or("the chain holds no certificate")?;
    let (_, leaf) = x509_parser::certificate::X509Certificate::from_der(leaf_der)
        .map_err(|e| format!("the leaf certificate does not parse: {e}"))?;
    let not_before = system_time(leaf.validity().not_before.timestamp())?;
    let not_after = system_time(leaf.validity().not_after.timestamp())?;
    if now.checked_add(CLOCK_SKEW).unwrap_or(now) < not_before {
        return Err(format!(
            "the leaf is not valid before {}",
            humantime_utc(not_before)
        ));
    }
    if now >= not_after {
        return Err(format!("the leaf expired at {}", humantime_utc(not_after)));
    }
    let names: Vec<&str> = match leaf.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::DNSName(dns) => Some(*dns),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(format!("the leaf's subjectAltName does not parse: {e}")),
    };
    if !names.iter().any(|name| name.eq_ignore_ascii_case(domain)) {
        return Err(format!("the leaf is for {names:?}, not for {domain}"));
    }
    let key = CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| format!("the key does not fit the leaf certificate: {e}"))?;
    Ok(Issued {
        key: Arc::new(key),
        not_before,
        not_after,
    })
}

/// The tls-alpn-01 certificate (RFC 8737 section 3): self-signed, for `domain` only, with the
/// critical acmeIdentifier extension holding the SHA-256 of the key authorization.
fn challenge_certificate(
    domain: &str,
    key_authorization_sha256: &[u8],
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, AcmeError> {
    let crypto = |what: &str, e: rcgen::Error| AcmeError::Crypto(format!("{what}: {e}"));
    if key_authorization_sha256.len() != 32 {
        return Err(AcmeError::Crypto(format!(
            "a key authorization digest of {} bytes, not 32",
            key_authorization_sha256.len()
        )));
    }
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| crypto("generating the challenge key", e))?;
    let mut params = CertificateParams::new(vec![domain.to_owned()])
        .map_err(|e| crypto("the challenge certificate's name", e))?;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "ACME Challenge Temp Certificate");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(1);
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(
        key_authorization_sha256,
    )];
    let certificate = params
        .self_signed(&key)
        .map_err(|e| crypto("signing the challenge certificate", e))?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    // Not CertifiedKey::from_der: its key check parses the certificate with webpki, which
    // refuses the critical acmeIdentifier extension; the key was made just above.
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| AcmeError::Crypto(format!("loading the challenge key: {e}")))?;
    let certified = CertifiedKey::new(vec![certificate.der().clone()], signing_key);
    Ok(Arc::new(certified))
}

/// The CSR for `domain`: the name as subject common name and DNS subjectAltName, as autocert.
fn certificate_request(domain: &str, key: &KeyPair) -> Result<Vec<u8>, AcmeError> {
    let mut params = CertificateParams::new(vec![domain.to_owned()])
        .map_err(|e| AcmeError::Crypto(format!("the CSR's name: {e}")))?;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, domain.to_owned());
    let csr = params
        .serialize_request(key)
        .map_err(|e| AcmeError::Crypto(format!("signing the CSR: {e}")))?;
    Ok(csr.der().to_vec())
}

/// Whether a ClientHello's ALPN list is exactly `acme-tls/1`: an ACME server validating
/// (autocert's `wantsTokenCert`).
fn wants_challenge<'a>(alpn: Option<impl Iterator<Item = &'a [u8]>>) -> bool {
    let Some(mut protocols) = alpn else {
        return false;
    };
    protocols.next() == Some(ACME_TLS_ALPN_PROTOCOL) && protocols.next().is_none()
}

/// A host name as compared: lower case, without a trailing dot.
fn normalize_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Checks `domain_name` and returns it normalized. Like autocert, a name needs at least two
/// labels; it must be a DNS name (no IP address, no wildcard: tls-alpn-01 cannot prove those).
fn check_domain(domain_name: &str) -> Result<String, AcmeError> {
    let domain = normalize_name(domain_name.trim());
    let refuse = |why: &str| {
        Err(AcmeError::Config(format!(
            "domain_name {domain_name:?} {why}"
        )))
    };
    if domain.is_empty() {
        return refuse("is empty: the ACME certificate needs the name the endpoint is reached by");
    }
    if domain.parse::<std::net::IpAddr>().is_ok() {
        return refuse("is an IP address; ACME certificates here are for DNS names");
    }
    if domain.contains('*') {
        return refuse("is a wildcard, which tls-alpn-01 cannot validate");
    }
    if rustls_pki_types::DnsName::try_from(domain.as_str()).is_err() {
        return refuse("is not a valid DNS name");
    }
    if !domain.contains('.') {
        return refuse("has a single label; a public name such as bundle.example.org is needed");
    }
    Ok(domain)
}

/// `meta.termsOfService` of an ACME directory document.
fn terms_of_service(directory: &[u8]) -> Result<Option<String>, String> {
    #[derive(Deserialize)]
    struct Directory {
        #[serde(default)]
        meta: Option<Meta>,
    }
    #[derive(Deserialize)]
    struct Meta {
        #[serde(rename = "termsOfService", default)]
        terms_of_service: Option<String>,
    }
    let directory: Directory = serde_json::from_slice(directory)
        .map_err(|e| format!("the directory is not an ACME directory document: {e}"))?;
    Ok(directory
        .meta
        .and_then(|meta| meta.terms_of_service)
        .filter(|url| !url.is_empty()))
}

/// The HTTPS client for the ACME server: the system's roots plus `extra_roots_pem`.
fn https_client(
    provider: &Arc<CryptoProvider>,
    extra_roots_pem: Option<&str>,
) -> Result<HttpsClient, AcmeError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::debug!(error = %error, "Could not load a system root certificate");
    }
    roots.add_parsable_certificates(native.certs);
    if let Some(pem) = extra_roots_pem {
        for certificate in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let certificate = certificate
                .map_err(|e| AcmeError::Tls(format!("extra root CA PEM does not parse: {e}")))?;
            roots
                .add(certificate)
                .map_err(|e| AcmeError::Tls(format!("extra root CA is not usable: {e}")))?;
        }
    }
    if roots.is_empty() {
        // A cached certificate can still be served; ordering will fail naming the issuer.
        tracing::warn!(
            "No trusted root certificates for the ACME server's HTTPS: the system has none \
             (install ca-certificates)"
        );
    }
    let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| AcmeError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    Ok(HyperClient::builder(TokioExecutor::new()).build(connector))
}

/// The account as cached: where it was registered, with which contact, and instant-acme's
/// credentials (its URL and key), kept as JSON so they can be written back unchanged.
#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory_url: String,
    #[serde(default)]
    contact: Vec<String>,
    credentials: serde_json::Value,
}

/// The cache folder's files.
struct Cache {
    dir: PathBuf,
    chain: PathBuf,
    key: PathBuf,
    account: PathBuf,
}

impl Cache {
    /// Creates the folder (0700) when missing.
    fn new(dir: PathBuf, domain: &str) -> Result<Self, AcmeError> {
        if dir.as_os_str().is_empty() {
            return Err(AcmeError::Config(
                "no cache folder (the server's data_dir/bundle-acme)".to_owned(),
            ));
        }
        crate::fs::ensure_private_dir(&dir, 0o700).map_err(|source| AcmeError::Cache {
            path: dir.clone(),
            source,
        })?;
        Ok(Self {
            chain: dir.join(domain),
            key: dir.join(format!("{domain}+key")),
            account: dir.join(ACCOUNT_FILE),
            dir,
        })
    }

    /// The cached certificate, when both files are there and make a certificate valid now;
    /// anything else is a miss, logged when it is not just absence.
    fn load_certificate(
        &self,
        domain: &str,
        now: SystemTime,
        provider: &CryptoProvider,
    ) -> Option<Issued> {
        let chain = read_optional(&self.chain)?;
        let key_pem = Zeroizing::new(read_optional(&self.key)?);
        let key = match PrivateKeyDer::from_pem_slice(&key_pem) {
            Ok(key) => key,
            Err(e) => {
                tracing::warn!(
                    path = %self.key.display(),
                    error = %e,
                    "Cached ACME certificate key does not parse; ordering a new certificate"
                );
                return None;
            }
        };
        match certified(&chain, key, domain, now, provider) {
            Ok(issued) => Some(issued),
            Err(reason) => {
                tracing::info!(
                    path = %self.chain.display(),
                    reason = %reason,
                    "Cached ACME certificate is unusable; ordering a new one"
                );
                None
            }
        }
    }

    /// Writes the key, then the chain, so a crash in between leaves a mismatch (a miss), never
    /// a chain with someone else's key.
    fn store_certificate(&self, chain_pem: &[u8], key_pem: &[u8]) -> Result<(), AcmeError> {
        for (path, data) in [(&self.key, key_pem), (&self.chain, chain_pem)] {
            crate::fs::atomic_write_private(path, data).map_err(|source| AcmeError::Cache {
                path: path.clone(),
                source,
            })?;
        }
        Ok(())
    }

    fn load_account(&self) -> Option<StoredAccount> {
        let data = Zeroizing::new(read_optional(&self.account)?);
        match serde_json::from_slice(&data) {
            Ok(stored) => Some(stored),
            Err(e) => {
                tracing::warn!(
                    path = %self.account.display(),
                    error = %e,
                    "Cached ACME account does not parse; registering a new one"
                );
                None
            }
        }
    }

    fn store_account(&self, stored: &StoredAccount) -> Result<(), AcmeError> {
        let data =
            Zeroizing::new(
                serde_json::to_vec_pretty(stored).map_err(|e| AcmeError::Cache {
                    path: self.account.clone(),
                    source: std::io::Error::other(e),
                })?,
            );
        crate::fs::atomic_write_private(&self.account, &data).map_err(|source| AcmeError::Cache {
            path: self.account.clone(),
            source,
        })
    }

    fn remove_account(&self) {
        if let Err(e) = std::fs::remove_file(&self.account)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.account.display(), error = %e, "Could not remove the cached ACME account");
        }
    }
}

/// A file's content; `None` when it is missing or unreadable (logged).
fn read_optional(path: &Path) -> Option<Vec<u8>> {
    match std::fs::read(path) {
        Ok(data) => Some(data),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "Could not read the ACME cache");
            None
        }
    }
}

/// Waits between failed attempts: [`RETRY_FIRST`], doubling up to [`RETRY_MAX`].
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self { next: RETRY_FIRST }
    }

    fn next(&mut self) -> Duration {
        let wait = self.next;
        self.next = (wait * 2).min(RETRY_MAX);
        wait
    }

    fn reset(&mut self) {
        self.next = RETRY_FIRST;
    }
}

/// Seconds since the epoch as a time; certificates before 1970 are refused.
fn system_time(unix_seconds: i64) -> Result<SystemTime, String> {
    u64::try_from(unix_seconds)
        .ok()
        .and_then(|secs| SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs)))
        .ok_or_else(|| format!("a certificate date ({unix_seconds}) out of range"))
}

/// RFC 3339 in UTC, for log lines and messages.
fn humantime_utc(at: SystemTime) -> String {
    let secs = match at.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_secs()).map_or(i64::MIN, |s| -s),
    };
    crate::cli::printer::rfc3339_utc(secs)
}

/// An error and its causes, `outer: inner: ...`, for messages people read (hyper's errors
/// say "client error (Connect)" and keep the reason in their source).
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// Sent on the directory request; instant-acme sends its own on the others.
const USER_AGENT: &str = concat!("spire-rs/", env!("CARGO_PKG_VERSION"));

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    const DOMAIN: &str = "bundle.example.org";
    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::aws_lc_rs::default_provider())
    }

    /// A self-signed certificate for `names` valid from `not_before` to `not_after` (Unix
    /// seconds), with its key as PEM.
    fn self_signed(names: &[&str], not_before: i64, not_after: i64) -> (String, String) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params.not_before = time::OffsetDateTime::from_unix_timestamp(not_before).unwrap();
        params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn unix_now() -> i64 {
        i64::try_from(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
        )
        .unwrap()
    }

    fn key_der(pem: &str) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    #[test]
    fn renewal_comes_at_two_thirds_of_short_lifetimes_and_30_days_before_long_ones() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        // Let's Encrypt's 90 days: 30 days before expiry, which is also a third.
        assert_eq!(renew_at(start, start + 90 * DAY), start + 60 * DAY);
        // The 6-day short-lived profile: after 4 days.
        assert_eq!(renew_at(start, start + 6 * DAY), start + 4 * DAY);
        // 45 days: 15 days before.
        assert_eq!(renew_at(start, start + 45 * DAY), start + 30 * DAY);
        // Pebble's 5 years: 30 days before expiry.
        assert_eq!(
            renew_at(start, start + 1826 * DAY),
            start + 1826 * DAY - 30 * DAY
        );
        // Nonsense dates renew at once rather than panic.
        assert_eq!(renew_at(start + DAY, start), start);
    }

    #[test]
    fn only_a_lone_acme_tls_alpn_asks_for_the_challenge() {
        let offer = |protocols: &[&'static [u8]]| wants_challenge(Some(protocols.iter().copied()));
        assert!(offer(&[b"acme-tls/1"]));
        assert!(!offer(&[b"h2", b"acme-tls/1"]));
        assert!(!offer(&[b"acme-tls/1", b"http/1.1"]));
        assert!(!offer(&[b"http/1.1"]));
        assert!(!offer(&[]));
        assert!(!wants_challenge(None::<std::iter::Empty<&[u8]>>));
        assert!(is_challenge_connection(Some(b"acme-tls/1")));
        assert!(!is_challenge_connection(Some(b"h2")));
        assert!(!is_challenge_connection(None));
        assert!(alpn_protocols().contains(&ACME_TLS_ALPN_PROTOCOL.to_vec()));
    }

    #[test]
    fn domain_names_are_normalized_and_checked_as_autocert_does() {
        assert_eq!(check_domain(" Bundle.Example.ORG. ").unwrap(), DOMAIN);
        for (name, why) in [
            ("", "is empty"),
            ("localhost", "single label"),
            ("127.0.0.1", "IP address"),
            ("::1", "IP address"),
            ("*.example.org", "wildcard"),
            ("bad name.example.org", "not a valid DNS name"),
        ] {
            let error = check_domain(name).unwrap_err().to_string();
            assert!(error.contains(why), "{name:?}: {error}");
            assert!(error.contains("domain_name"), "{name:?}: {error}");
        }
        assert_eq!(normalize_name("Other.Example.org."), "other.example.org");
    }

    #[test]
    fn the_terms_of_service_come_from_the_directory_meta() {
        let pebble = br#"{"keyChange":"https://127.0.0.1:14000/rollover-account-key",
            "meta":{"externalAccountRequired":false,"termsOfService":"data:text/plain,Do%20what%20thou%20wilt"},
            "newAccount":"https://127.0.0.1:14000/sign-me-up"}"#;
        assert_eq!(
            terms_of_service(pebble).unwrap().as_deref(),
            Some("data:text/plain,Do%20what%20thou%20wilt")
        );
        assert_eq!(terms_of_service(br#"{"newNonce":"x"}"#).unwrap(), None);
        assert_eq!(
            terms_of_service(br#"{"meta":{"website":"https://example.org"}}"#).unwrap(),
            None
        );
        assert_eq!(
            terms_of_service(br#"{"meta":{"termsOfService":""}}"#).unwrap(),
            None
        );
        let error = terms_of_service(b"<html>").unwrap_err();
        assert!(error.contains("not an ACME directory"), "{error}");
    }

    #[test]
    fn the_challenge_certificate_carries_the_critical_acme_identifier() {
        let digest: Vec<u8> = (0..32).collect();
        let certified = challenge_certificate(DOMAIN, &digest, &provider()).unwrap();
        assert_eq!(certified.cert.len(), 1);
        let (_, cert) =
            x509_parser::certificate::X509Certificate::from_der(&certified.cert[0]).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            san.value.general_names,
            vec![GeneralName::DNSName(DOMAIN)],
            "exactly the one name being validated"
        );
        let acme = cert
            .extensions()
            .iter()
            .find(|ext| ext.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier extension");
        assert!(acme.critical);
        let mut expected = vec![0x04, 0x20];
        expected.extend_from_slice(&digest);
        assert_eq!(
            acme.value,
            expected.as_slice(),
            "DER OCTET STRING of the digest"
        );

        let error = challenge_certificate(DOMAIN, &digest[..31], &provider()).unwrap_err();
        assert!(error.to_string().contains("31 bytes"), "{error}");
    }

    #[test]
    fn the_csr_names_the_domain() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let der = certificate_request(DOMAIN, &key).unwrap();
        let (_, csr) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&der).unwrap();
        csr.verify_signature().unwrap();
        let cn: Vec<_> = csr
            .certification_request_info
            .subject
            .iter_common_name()
            .map(|cn| cn.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(cn, [DOMAIN]);
        let names: Vec<String> = csr
            .requested_extensions()
            .into_iter()
            .flatten()
            .filter_map(|ext| match ext {
                x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) => Some(
                    san.general_names
                        .iter()
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>(),
                ),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(names, [format!("DNSName({DOMAIN})")]);
    }

    #[test]
    fn a_cached_certificate_is_used_only_when_valid_for_the_domain_and_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join(CACHE_DIR_NAME), DOMAIN).unwrap();
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&cache.dir), 0o700);
        let now = SystemTime::now();
        let provider = provider();
        assert!(cache.load_certificate(DOMAIN, now, &provider).is_none());

        let (chain, key) = self_signed(&[DOMAIN], unix_now() - 3600, unix_now() + 90 * 86400);
        cache
            .store_certificate(chain.as_bytes(), key.as_bytes())
            .unwrap();
        assert_eq!(mode(&cache.chain), 0o600);
        assert_eq!(mode(&cache.key), 0o600);
        assert_eq!(cache.chain.file_name().unwrap(), DOMAIN);
        let issued = cache.load_certificate(DOMAIN, now, &provider).unwrap();
        assert!(issued.renew_at() > now + 59 * DAY && issued.renew_at() < now + 61 * DAY);
        assert!(
            cache
                .load_certificate("other.example.org", now, &provider)
                .is_none()
        );
        assert!(
            cache
                .load_certificate(DOMAIN, now + 91 * DAY, &provider)
                .is_none(),
            "expired"
        );

        // A key that is not the certificate's.
        let (_, other_key) = self_signed(&[DOMAIN], unix_now() - 3600, unix_now() + 86400);
        cache
            .store_certificate(chain.as_bytes(), other_key.as_bytes())
            .unwrap();
        assert!(cache.load_certificate(DOMAIN, now, &provider).is_none());

        // Not yet valid (beyond the tolerated clock skew).
        let (chain, key) = self_signed(&[DOMAIN], unix_now() + 3600, unix_now() + 86400);
        assert!(certified(chain.as_bytes(), key_der(&key), DOMAIN, now, &provider).is_err());
        // Garbage.
        let error = certified(b"nothing", key_der(&key), DOMAIN, now, &provider).unwrap_err();
        assert!(error.contains("no certificate"), "{error}");
    }

    #[test]
    fn the_account_file_round_trips_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().to_path_buf(), DOMAIN).unwrap();
        assert!(cache.load_account().is_none());
        let stored = StoredAccount {
            directory_url: "https://acme.example/dir".to_owned(),
            contact: vec!["mailto:ops@example.org".to_owned()],
            credentials: serde_json::json!({"id": "https://acme.example/acct/1", "key_pkcs8": "AA", "directory": "https://acme.example/dir"}),
        };
        cache.store_account(&stored).unwrap();
        let mode = std::fs::metadata(&cache.account)
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = cache.load_account().unwrap();
        assert_eq!(loaded.directory_url, stored.directory_url);
        assert_eq!(loaded.contact, stored.contact);
        assert_eq!(loaded.credentials, stored.credentials);
        cache.remove_account();
        assert!(cache.load_account().is_none());
        cache.remove_account();

        std::fs::write(&cache.account, b"{").unwrap();
        assert!(cache.load_account().is_none(), "unparsable is a miss");
    }

    #[test]
    fn backoff_doubles_up_to_fifteen_minutes_and_resets() {
        let mut backoff = Backoff::new();
        let waits: Vec<u64> = (0..12).map(|_| backoff.next().as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900]);
        backoff.reset();
        assert_eq!(backoff.next(), RETRY_FIRST);
    }

    #[test]
    fn the_configuration_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let config = |directory_url: &str, domain_name: &str| AcmeConfig {
            directory_url: directory_url.to_owned(),
            domain_name: domain_name.to_owned(),
            cache_dir: dir.path().join(CACHE_DIR_NAME),
            ..AcmeConfig::default()
        };
        let error = AcmeManager::new(config("http://acme.example/dir", DOMAIN)).unwrap_err();
        assert!(error.to_string().contains("https://"), "{error}");
        let error = AcmeManager::new(config("", "localhost")).unwrap_err();
        assert!(error.to_string().contains("single label"), "{error}");
        let manager = AcmeManager::new(config("", DOMAIN)).unwrap();
        assert_eq!(manager.directory_url, LETS_ENCRYPT_DIRECTORY_URL);
        assert!(manager.certificate().is_none());
        let error = AcmeManager::new(AcmeConfig {
            cache_dir: PathBuf::new(),
            ..config("", DOMAIN)
        })
        .unwrap_err();
        assert!(error.to_string().contains("cache"), "{error}");
    }

    /// Accepts any server certificate and keeps the leaf, to look at challenge certificates.
    #[derive(Debug, Default)]
    struct KeepLeaf(std::sync::Mutex<Option<CertificateDer<'static>>>);

    impl ServerCertVerifier for KeepLeaf {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            *self.0.lock().unwrap() = Some(end_entity.clone().into_owned());
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }

        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    /// A handshake with the manager over an in-memory pipe: the leaf the server presented, or
    /// the client's error.
    async fn handshake(
        manager: &Arc<AcmeManager>,
        server_name: &str,
        alpn: &[&[u8]],
    ) -> Result<CertificateDer<'static>, String> {
        let server = tokio_rustls::TlsAcceptor::from(Arc::new(manager.server_config().unwrap()));
        let verifier = Arc::new(KeepLeaf::default());
        let mut client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_no_client_auth();
        client.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let client = tokio_rustls::TlsConnector::from(Arc::new(client));
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server_side = tokio::spawn(async move {
            if let Ok(mut tls) = server.accept(server_io).await {
                let _ = tls.write_all(b"ok").await;
                let _ = tls.shutdown().await;
            }
        });
        let name = ServerName::try_from(server_name.to_owned()).unwrap();
        let result = client.connect(name, client_io).await;
        let outcome = match result {
            Ok(mut tls) => {
                let mut buf = Vec::new();
                let _ = tls.read_to_end(&mut buf).await;
                Ok(verifier.0.lock().unwrap().clone().unwrap())
            }
            Err(e) => Err(e.to_string()),
        };
        server_side.await.unwrap();
        outcome
    }

    #[tokio::test]
    async fn the_resolver_serves_the_domain_and_challenges_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let cache_dir = dir.path().join(CACHE_DIR_NAME);
        let (chain, key) = self_signed(&[DOMAIN], unix_now() - 3600, unix_now() + 90 * 86400);
        Cache::new(cache_dir.clone(), DOMAIN)
            .unwrap()
            .store_certificate(chain.as_bytes(), key.as_bytes())
            .unwrap();
        let manager = AcmeManager::new(AcmeConfig {
            domain_name: DOMAIN.to_owned(),
            cache_dir,
            ..AcmeConfig::default()
        })
        .unwrap();
        let cached = CertificateDer::from_pem_slice(chain.as_bytes()).unwrap();
        assert_eq!(manager.certificate().as_ref(), Some(&cached));

        let leaf = handshake(&manager, DOMAIN, &[b"http/1.1"]).await.unwrap();
        assert_eq!(leaf, cached);
        let leaf = handshake(&manager, "BUNDLE.example.org", &[])
            .await
            .unwrap();
        assert_eq!(leaf, cached, "names compare case-insensitively");

        let error = handshake(&manager, "other.example.org", &[b"http/1.1"])
            .await
            .unwrap_err();
        assert!(error.contains("alert"), "{error}");
        let error = handshake(&manager, "127.0.0.1", &[b"http/1.1"])
            .await
            .unwrap_err();
        assert!(error.contains("alert"), "no SNI, no certificate: {error}");

        // acme-tls/1 alone asks for the challenge certificate, which exists only while a
        // validation is in progress.
        assert!(handshake(&manager, DOMAIN, &[b"acme-tls/1"]).await.is_err());
        let digest = [7u8; 32];
        let challenge = challenge_certificate(DOMAIN, &digest, &manager.provider).unwrap();
        let in_progress = ChallengeCertificate::put(&manager, challenge.clone());
        let leaf = handshake(&manager, DOMAIN, &[b"acme-tls/1"]).await.unwrap();
        assert_eq!(leaf, challenge.cert[0]);
        let leaf = handshake(&manager, DOMAIN, &[b"h2", b"acme-tls/1"])
            .await
            .unwrap();
        assert_eq!(
            leaf, cached,
            "acme-tls/1 among others is an ordinary client"
        );
        assert!(
            handshake(&manager, "other.example.org", &[b"acme-tls/1"])
                .await
                .is_err()
        );
        drop(in_progress);
        assert!(handshake(&manager, DOMAIN, &[b"acme-tls/1"]).await.is_err());
    }

    #[test]
    fn error_chains_keep_the_causes() {
        let inner = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let outer = std::io::Error::other(inner);
        assert_eq!(error_chain(&outer), "refused");
        #[derive(Debug, thiserror::Error)]
        #[error("client error (Connect)")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "tcp connect error",
        ));
        assert_eq!(error_chain(&e), "client error (Connect): tcp connect error");
    }
}
