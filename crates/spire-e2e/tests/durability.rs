#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

//! Durability and bad-input behaviour of the real `spire-server` on every SQL engine.
//!
//! SQLite always runs. PostgreSQL and MySQL/MariaDB run when `SPIRE_TEST_POSTGRES` (a libpq
//! key=value string) and `SPIRE_TEST_MYSQL` (a go-sql-driver DSN) are set, as
//! `scripts/test-databases.sh` leaves them in `target/test-databases.env`; each test makes a
//! fresh database of its own and drops it when it passes (a drop that keeps failing is
//! reported on standard error, never failing the test).
//!
//! * `kill_9_*`: thousands of concurrent entry creates, `kill -9` in the middle, restart:
//!   every create that returned OK is there with its selectors, and the tables hold no
//!   half-written entry.
//! * `refuses_to_start_*`: a wrong password, a closed port, a typo in the connection string
//!   and a newer schema each stop `spire-server run` with a message naming the cause.
//! * `database_outage_*`: the database goes away behind a loopback forwarder; API calls fail
//!   with Unavailable, and succeed again by themselves once it is back, with nothing lost.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use spire_e2e::{ServerProcess, Signal, binary, free_port, send_signal, with_retries};
use spire_proto::spire::api::server::entry::v1::entry_client::EntryClient;
use spire_proto::spire::api::server::entry::v1::{BatchCreateEntryRequest, ListEntriesRequest};
use spire_proto::spire::api::types::{Entry, Selector, Spiffeid};
use sqlx::Row;
use sqlx::any::AnyPoolOptions;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::watch;
use tonic::Code;
use tonic::transport::{Channel, Endpoint, Uri};

/// Entry creates attempted per engine, before and after the kill.
const TOTAL_CREATES: usize = 10_000;
/// The server is killed once this many creates have returned OK.
const KILL_AFTER_OKS: usize = 3_000;
/// Concurrent clients, each on its own connection to the admin socket.
const CLIENTS: usize = 32;

/// One heavy kill test at a time: they share two cores with everything else.
static HEAVY: Mutex<()> = Mutex::new(());

// ---------------------------------------------------------------------------------------
// Databases
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Engine {
    Sqlite,
    Postgres,
    Mysql,
}

impl Engine {
    fn database_type(self) -> &'static str {
        match self {
            Engine::Sqlite => "sqlite3",
            Engine::Postgres => "postgres",
            Engine::Mysql => "mysql",
        }
    }

    /// The base connection string from the environment, or `None` (with a skip line).
    fn base(self, test: &str) -> Option<String> {
        let var = match self {
            Engine::Sqlite => return Some(String::new()),
            Engine::Postgres => "SPIRE_TEST_POSTGRES",
            Engine::Mysql => "SPIRE_TEST_MYSQL",
        };
        match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => Some(v),
            _ => {
                println!(
                    "skipped {test} on {}: {var} is not set (run scripts/test-databases.sh and \
                     source target/test-databases.env)",
                    self.database_type()
                );
                None
            }
        }
    }
}

/// Where a server connects: host, port, user, password, database.
#[derive(Clone, Debug)]
struct Server {
    host: String,
    port: u16,
    user: String,
    password: String,
    database: String,
    /// libpq pairs other than the five above (PostgreSQL) or the DSN parameters (MySQL).
    extra: Vec<(String, String)>,
}

fn parse_postgres(s: &str) -> Server {
    let mut server = Server {
        host: "127.0.0.1".into(),
        port: 5432,
        user: "postgres".into(),
        password: String::new(),
        database: "postgres".into(),
        extra: Vec::new(),
    };
    for pair in s.split_whitespace() {
        let (k, v) = pair
            .split_once('=')
            .unwrap_or_else(|| panic!("SPIRE_TEST_POSTGRES: {pair:?} is not key=value"));
        let v = v.trim_matches('\'').to_owned();
        match k {
            "host" => server.host = v,
            "port" => server.port = v.parse().unwrap(),
            "user" => server.user = v,
            "password" => server.password = v,
            "dbname" => server.database = v,
            _ => server.extra.push((k.to_owned(), v)),
        }
    }
    server
}

fn parse_mysql(dsn: &str) -> Server {
    let (path, params) = dsn.split_once('?').unwrap_or((dsn, ""));
    let (prefix, database) = path.rsplit_once('/').unwrap();
    let (credentials, address) = prefix.rsplit_once('@').unwrap();
    let (user, password) = credentials.split_once(':').unwrap_or((credentials, ""));
    let address = address
        .strip_prefix("tcp(")
        .and_then(|a| a.strip_suffix(')'))
        .unwrap_or("127.0.0.1:3306");
    let (host, port) = address.rsplit_once(':').unwrap();
    Server {
        host: host.into(),
        port: port.parse().unwrap(),
        user: user.into(),
        password: password.into(),
        database: database.into(),
        extra: params
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
    }
}

impl Server {
    /// The connection string in the engine's own format (what `server.conf` holds).
    fn connection_string(&self, engine: Engine) -> String {
        match engine {
            Engine::Postgres => {
                let mut s = format!(
                    "dbname={} user={} password={} host={} port={}",
                    self.database, self.user, self.password, self.host, self.port
                );
                for (k, v) in &self.extra {
                    s.push_str(&format!(" {k}={v}"));
                }
                s
            }
            Engine::Mysql => {
                let mut s = format!(
                    "{}:{}@tcp({}:{})/{}",
                    self.user, self.password, self.host, self.port, self.database
                );
                let params: Vec<String> =
                    self.extra.iter().map(|(k, v)| format!("{k}={v}")).collect();
                if !params.is_empty() {
                    s.push('?');
                    s.push_str(&params.join("&"));
                }
                s
            }
            Engine::Sqlite => unreachable!("SQLite has no server"),
        }
    }

    /// A URL for sqlx's `Any` driver, for the test's own raw SQL.
    fn url(&self, engine: Engine) -> String {
        let enc = |s: &str| -> String {
            s.bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                        char::from(b).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect()
        };
        let scheme = match engine {
            Engine::Postgres => "postgres",
            _ => "mysql",
        };
        let mut url = format!(
            "{scheme}://{}:{}@{}:{}/{}",
            enc(&self.user),
            enc(&self.password),
            self.host,
            self.port,
            enc(&self.database)
        );
        if engine == Engine::Postgres {
            url.push_str("?sslmode=disable");
        }
        url
    }
}

/// A fresh database for one test: a file for SQLite, a new database on the shared
/// PostgreSQL or MySQL server otherwise.
struct TestDb {
    engine: Engine,
    /// For PostgreSQL/MySQL: the server, with `database` set to this test's database.
    server: Option<Server>,
    /// For SQLite: the database file.
    sqlite_path: Option<PathBuf>,
    admin_url: Option<String>,
}

impl TestDb {
    fn create(runtime: &Runtime, engine: Engine, test: &str, dir: &Path) -> Option<Self> {
        sqlx::any::install_default_drivers();
        let base = engine.base(test)?;
        if engine == Engine::Sqlite {
            return Some(Self {
                engine,
                server: None,
                sqlite_path: Some(dir.join("data/datastore.sqlite3")),
                admin_url: None,
            });
        }
        let mut server = match engine {
            Engine::Postgres => parse_postgres(&base),
            _ => parse_mysql(&base),
        };
        let admin_url = server.url(engine);
        let name = format!("spire_e2e_{}_{test}", std::process::id());
        let (drop, create) = match engine {
            Engine::Postgres => (
                format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
                format!("CREATE DATABASE \"{name}\""),
            ),
            _ => (
                format!("DROP DATABASE IF EXISTS `{name}`"),
                format!("CREATE DATABASE `{name}`"),
            ),
        };
        with_retries(&format!("dropping a leftover {name}"), || {
            runtime.block_on(admin_sql(&admin_url, &drop))
        })
        .and_then(|()| runtime.block_on(admin_sql(&admin_url, &create)))
        .unwrap_or_else(|e| panic!("creating database {name}: {e}"));
        server.database = name;
        Some(Self {
            engine,
            server: Some(server),
            sqlite_path: None,
            admin_url: Some(admin_url),
        })
    }

    fn connection_string(&self) -> String {
        match (&self.server, &self.sqlite_path) {
            (Some(server), _) => server.connection_string(self.engine),
            (None, Some(path)) => path.display().to_string(),
            (None, None) => unreachable!(),
        }
    }

    /// A pool straight to this database, for checks the API cannot make.
    async fn raw(&self) -> sqlx::AnyPool {
        let url = match (&self.server, &self.sqlite_path) {
            (Some(server), _) => server.url(self.engine),
            (None, Some(path)) => format!("sqlite://{}?mode=rw", path.display()),
            (None, None) => unreachable!(),
        };
        AnyPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
    }

    /// Drops the database (after the test passed). A drop that keeps failing is reported,
    /// not fatal: the test's assertions have passed.
    fn remove(self, runtime: &Runtime) {
        let (Some(server), Some(admin_url)) = (&self.server, &self.admin_url) else {
            return;
        };
        let sql = match self.engine {
            Engine::Postgres => format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                server.database
            ),
            _ => format!("DROP DATABASE IF EXISTS `{}`", server.database),
        };
        if let Err(e) = with_retries(&format!("dropping database {}", server.database), || {
            runtime.block_on(admin_sql(admin_url, &sql))
        }) {
            eprintln!("warning: {e}; the database is left on the server");
        }
    }
}

/// Runs one statement on the database `url` names, over a connection of its own.
async fn admin_sql(url: &str, sql: &str) -> Result<(), String> {
    let admin = AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .map_err(|e| format!("connect to {url}: {e}"))?;
    let result = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&admin)
        .await
        .map(|_| ())
        .map_err(|e| format!("{sql}: {e}"));
    admin.close().await;
    result
}

async fn count(pool: &sqlx::AnyPool, sql: &str) -> i64 {
    let row = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    row.try_get::<i64, _>(0)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

async fn execute(pool: &sqlx::AnyPool, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

// ---------------------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------------------

fn hcl_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Writes `server.conf` into `dir` for `database_type` + `connection_string` and the TCP
/// `port`, and returns its path, the admin socket path and the port.
fn write_config(
    dir: &Path,
    database_type: &str,
    connection_string: &str,
    port: u16,
) -> (PathBuf, PathBuf, u16) {
    let socket = dir.join("api.sock");
    let data = dir.join("data");
    let pool = if database_type == "sqlite3" {
        ""
    } else {
        // Several tests share one database server; stay well under its connection limit.
        "max_open_conns = 16"
    };
    let config = format!(
        r#"server {{
    bind_address = "127.0.0.1"
    bind_port = "{port}"
    socket_path = {socket}
    trust_domain = "example.org"
    data_dir = {data}
    log_level = "INFO"
}}

plugins {{
    DataStore "sql" {{
        plugin_data {{
            database_type = {database_type}
            connection_string = {connection_string}
            {pool}
        }}
    }}
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
    KeyManager "disk" {{
        plugin_data {{
            keys_path = {keys}
        }}
    }}
}}
"#,
        socket = hcl_string(&socket.display().to_string()),
        data = hcl_string(&data.display().to_string()),
        database_type = hcl_string(database_type),
        connection_string = hcl_string(connection_string),
        keys = hcl_string(&data.join("keys.json").display().to_string()),
    );
    let path = dir.join("server.conf");
    std::fs::write(&path, config).unwrap();
    (path, socket, port)
}

/// Writes a config on a free port and starts the server on it for the first time (on
/// another port if that one was taken meanwhile); returns the server and its config.
fn start_first(
    dir: &Path,
    database_type: &str,
    connection_string: &str,
) -> (ServerProcess, (PathBuf, PathBuf, u16)) {
    let server = ServerProcess::start_on_free_port(dir, |port| {
        let (config, socket, _) = write_config(dir, database_type, connection_string, port);
        (config, socket)
    });
    let config = (
        server.config_path.clone(),
        server.socket_path.clone(),
        server.port,
    );
    (server, config)
}

/// Starts the server again on a config [`start_first`] wrote.
fn start_server(dir: &Path, config: &(PathBuf, PathBuf, u16)) -> ServerProcess {
    ServerProcess::start_with_config(dir, &config.0, config.1.clone(), config.2)
}

/// The pid of the `spire-server run -config <config>` process (the harness keeps its
/// child to itself), from `/proc`.
fn server_pid(config: &Path) -> u32 {
    let wanted = config.display().to_string();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.first().is_some_and(|a| a.ends_with("spire-server"))
            && args.iter().any(|a| a == "run")
            && args.contains(&wanted)
        {
            return pid;
        }
    }
    panic!("no spire-server process runs with {wanted}");
}

/// Runs `spire-server run -config <config>` expecting it to give up; returns its exit code
/// and everything it printed. The output goes to a file next to the config (a pipe nobody
/// reads while the process runs could fill up and hang it).
fn run_expecting_failure(config: &Path) -> (Option<i32>, String, Duration) {
    let output_path = config.with_file_name("refused-run.log");
    let output = std::fs::File::create(&output_path).unwrap();
    let start = Instant::now();
    let mut child = Command::new(binary("spire-server"))
        .args(["run", "-config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(output.try_clone().unwrap())
        .stderr(output)
        .spawn()
        .unwrap();
    let deadline = Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "spire-server with {} still runs after {deadline:?}:\n{}",
                config.display(),
                std::fs::read_to_string(&output_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let elapsed = start.elapsed();
    let text = std::fs::read_to_string(&output_path).unwrap();
    (status.code(), text, elapsed)
}

// ---------------------------------------------------------------------------------------
// Entry API client
// ---------------------------------------------------------------------------------------

async fn entry_client(socket: &Path) -> EntryClient<Channel> {
    let socket = socket.to_path_buf();
    let channel = Endpoint::from_static("http://localhost")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .unwrap();
    EntryClient::new(channel)
}

fn spiffe_path(i: usize) -> String {
    format!("/durability/{i}")
}

fn selectors(i: usize) -> BTreeSet<(String, String)> {
    [
        ("unix".to_owned(), format!("uid:{i}")),
        ("unix".to_owned(), format!("gid:{}", i % 97)),
    ]
    .into_iter()
    .collect()
}

fn entry(i: usize) -> Entry {
    Entry {
        spiffe_id: Some(Spiffeid {
            trust_domain: "example.org".into(),
            path: spiffe_path(i),
        }),
        parent_id: Some(Spiffeid {
            trust_domain: "example.org".into(),
            path: "/spire/agent/join_token/durability".into(),
        }),
        selectors: selectors(i)
            .into_iter()
            .map(|(r#type, value)| Selector { r#type, value })
            .collect(),
        ..Default::default()
    }
}

/// Every entry the server lists, paging through ListEntries.
async fn list_all(client: &mut EntryClient<Channel>) -> Vec<Entry> {
    let mut entries = Vec::new();
    let mut page_token = String::new();
    loop {
        let response = client
            .list_entries(ListEntriesRequest {
                page_size: 1000,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|s| panic!("ListEntries: {s}"))
            .into_inner();
        entries.extend(response.entries);
        if response.next_page_token.is_empty() {
            return entries;
        }
        page_token = response.next_page_token;
    }
}

/// What the concurrent clients saw.
#[derive(Default)]
struct Outcomes {
    /// Entry index -> the ID the server returned with OK.
    ok: HashMap<usize, String>,
    /// Indices whose create failed or got no answer (they may or may not exist).
    uncertain: BTreeSet<usize>,
}

/// Creates entries `next..TOTAL_CREATES` from [`CLIENTS`] concurrent clients (batch sizes 1
/// to 4). When `kill_config` is given, `kill -9`s that server once [`KILL_AFTER_OKS`]
/// creates returned OK in total (counting `outcomes`); clients stop at their first error.
async fn create_load(
    socket: &Path,
    next: Arc<AtomicUsize>,
    outcomes: Arc<Mutex<Outcomes>>,
    kill_config: Option<PathBuf>,
) {
    let killed = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for worker in 0..CLIENTS {
        let socket = socket.to_path_buf();
        let next = Arc::clone(&next);
        let outcomes = Arc::clone(&outcomes);
        let kill_config = kill_config.clone();
        let killed = Arc::clone(&killed);
        tasks.push(tokio::spawn(async move {
            let mut client = entry_client(&socket).await;
            let batch = worker % 4 + 1;
            loop {
                let first = next.fetch_add(batch, Ordering::SeqCst);
                if first >= TOTAL_CREATES {
                    return;
                }
                let indices: Vec<usize> = (first..(first + batch).min(TOTAL_CREATES)).collect();
                let request = BatchCreateEntryRequest {
                    entries: indices.iter().map(|i| entry(*i)).collect(),
                    output_mask: None,
                };
                let response = client.batch_create_entry(request).await;
                let mut failed = false;
                let mut outcomes = outcomes.lock().unwrap();
                match response {
                    Ok(response) => {
                        let results = response.into_inner().results;
                        assert_eq!(results.len(), indices.len(), "one result per entry");
                        for (i, result) in indices.iter().zip(results) {
                            let code = result.status.as_ref().map_or(0, |s| s.code);
                            match result.entry {
                                Some(e) if code == 0 => {
                                    let path = e.spiffe_id.as_ref().map(|s| s.path.clone());
                                    assert_eq!(path, Some(spiffe_path(*i)), "OK for another entry");
                                    outcomes.ok.insert(*i, e.id);
                                }
                                _ => {
                                    assert!(
                                        killed.load(Ordering::SeqCst),
                                        "create {i} failed before any kill: {:?}",
                                        result.status
                                    );
                                    outcomes.uncertain.insert(*i);
                                    failed = true;
                                }
                            }
                        }
                    }
                    Err(status) => {
                        assert!(
                            killed.load(Ordering::SeqCst),
                            "BatchCreateEntry failed before any kill: {status}"
                        );
                        outcomes.uncertain.extend(indices.iter().copied());
                        failed = true;
                    }
                }
                if let Some(config) = &kill_config
                    && outcomes.ok.len() >= KILL_AFTER_OKS
                    && !killed.swap(true, Ordering::SeqCst)
                {
                    let pid = server_pid(config);
                    send_signal(pid, Signal::KILL).unwrap_or_else(|e| panic!("kill -9 {pid}: {e}"));
                }
                drop(outcomes);
                if failed {
                    return;
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// kill -9 in the middle of 10 000 creates
// ---------------------------------------------------------------------------------------

fn kill_9_during_creates(engine: Engine) {
    let _heavy = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let Some(db) = TestDb::create(&runtime, engine, "kill9", dir.path()) else {
        return;
    };
    let started = Instant::now();
    let (mut server, config) =
        start_first(dir.path(), engine.database_type(), &db.connection_string());

    let next = Arc::new(AtomicUsize::new(0));
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let load_start = Instant::now();
    runtime.block_on(create_load(
        &config.1,
        Arc::clone(&next),
        Arc::clone(&outcomes),
        Some(config.0.clone()),
    ));
    let before_kill = load_start.elapsed();
    let (oks_before, uncertain) = {
        let o = outcomes.lock().unwrap();
        (o.ok.len(), o.uncertain.len())
    };
    assert!(
        oks_before >= KILL_AFTER_OKS,
        "the server was never killed: {oks_before} OKs"
    );
    assert!(
        next.load(Ordering::SeqCst) < TOTAL_CREATES,
        "every create was sent before the kill; raise TOTAL_CREATES"
    );

    // Restart on the same config, then finish the remaining creates.
    server.stop(); // reaps the killed child
    let restart = Instant::now();
    server = start_server(dir.path(), &config);
    let restart_time = restart.elapsed();
    let load_start = Instant::now();
    runtime.block_on(create_load(
        &config.1,
        Arc::clone(&next),
        Arc::clone(&outcomes),
        None,
    ));
    let after_restart = load_start.elapsed();

    let outcomes = outcomes.lock().unwrap();
    let (listed, raw) = runtime.block_on(async {
        let mut client = entry_client(&config.1).await;
        let listed = list_all(&mut client).await;
        let pool = db.raw().await;
        let raw = RawCounts::read(&pool, engine).await;
        pool.close().await;
        (listed, raw)
    });

    // Every OK'd create is there, with the ID and selectors it was created with.
    let by_id: HashMap<&str, &Entry> = listed.iter().map(|e| (e.id.as_str(), e)).collect();
    assert_eq!(by_id.len(), listed.len(), "ListEntries repeated an entry");
    for (i, id) in &outcomes.ok {
        let entry = by_id
            .get(id.as_str())
            .unwrap_or_else(|| panic!("entry {i} (ID {id}) returned OK but is gone"));
        assert_eq!(
            entry.spiffe_id.as_ref().map(|s| s.path.as_str()),
            Some(spiffe_path(*i).as_str())
        );
        let got: BTreeSet<(String, String)> = entry
            .selectors
            .iter()
            .map(|s| (s.r#type.clone(), s.value.clone()))
            .collect();
        assert_eq!(got, selectors(*i), "selectors of entry {i} ({id})");
    }
    // Nothing is there that was never asked for, and nothing twice.
    let mut seen = BTreeSet::new();
    for entry in &listed {
        let path = entry
            .spiffe_id
            .as_ref()
            .map(|s| s.path.clone())
            .unwrap_or_default();
        let i: usize = path
            .strip_prefix("/durability/")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected entry {path}"));
        assert!(seen.insert(i), "entry {i} exists twice");
        assert!(
            outcomes.ok.get(&i) == Some(&entry.id) || outcomes.uncertain.contains(&i),
            "entry {i} ({}) exists but its create neither returned OK nor was in flight",
            entry.id
        );
    }
    assert_eq!(raw.entries, listed.len() as i64, "rows vs listed entries");
    assert_eq!(raw.orphan_selectors, 0, "selectors rows without an entry");
    assert_eq!(
        raw.entries_without_selectors, 0,
        "entries without selectors"
    );
    assert_eq!(
        raw.partial_selector_sets, 0,
        "entries with some of their selectors"
    );
    assert_eq!(raw.integrity, "ok", "PRAGMA integrity_check");

    println!(
        "{}: {} OK before kill -9 in {:.1}s ({:.0}/s), {} in flight at the kill ({} of them \
         committed), restart in {:.1}s, {} OK after restart in {:.1}s; {} entries, all OK'd \
         ones present; total {:.1}s",
        engine.database_type(),
        oks_before,
        before_kill.as_secs_f64(),
        oks_before as f64 / before_kill.as_secs_f64(),
        uncertain,
        listed.len() - outcomes.ok.len(),
        restart_time.as_secs_f64(),
        outcomes.ok.len() - oks_before,
        after_restart.as_secs_f64(),
        listed.len(),
        started.elapsed().as_secs_f64(),
    );
    drop(server);
    db.remove(&runtime);
}

/// What the tables say about half-written entries.
struct RawCounts {
    entries: i64,
    orphan_selectors: i64,
    entries_without_selectors: i64,
    /// Entries whose selector count is not the two every test entry has.
    partial_selector_sets: i64,
    integrity: String,
}

impl RawCounts {
    async fn read(pool: &sqlx::AnyPool, engine: Engine) -> Self {
        let integrity = if engine == Engine::Sqlite {
            let row = sqlx::query("PRAGMA integrity_check")
                .fetch_one(pool)
                .await
                .unwrap();
            row.try_get::<String, _>(0).unwrap()
        } else {
            "ok".to_owned()
        };
        Self {
            entries: count(pool, "SELECT COUNT(*) FROM registered_entries").await,
            orphan_selectors: count(
                pool,
                "SELECT COUNT(*) FROM selectors s WHERE NOT EXISTS \
                 (SELECT 1 FROM registered_entries e WHERE e.id = s.registered_entry_id)",
            )
            .await,
            entries_without_selectors: count(
                pool,
                "SELECT COUNT(*) FROM registered_entries e WHERE NOT EXISTS \
                 (SELECT 1 FROM selectors s WHERE s.registered_entry_id = e.id)",
            )
            .await,
            partial_selector_sets: count(
                pool,
                "SELECT COUNT(*) FROM (SELECT registered_entry_id FROM selectors \
                 GROUP BY registered_entry_id HAVING COUNT(*) <> 2) t",
            )
            .await,
            integrity,
        }
    }
}

#[test]
fn kill_9_during_creates_sqlite() {
    kill_9_during_creates(Engine::Sqlite);
}

#[test]
fn kill_9_during_creates_postgres() {
    kill_9_during_creates(Engine::Postgres);
}

#[test]
fn kill_9_during_creates_mysql() {
    kill_9_during_creates(Engine::Mysql);
}

// ---------------------------------------------------------------------------------------
// Bad input: the server refuses to start, naming the cause
// ---------------------------------------------------------------------------------------

/// Starts `spire-server run` on `connection_string` and requires it to exit non-zero, in
/// good time, printing every one of `expected` (case-insensitive).
fn assert_refuses(
    engine: Engine,
    dir: &Path,
    connection_string: &str,
    expected: &[&str],
) -> String {
    let config = write_config(dir, engine.database_type(), connection_string, free_port());
    let (code, output, elapsed) = run_expecting_failure(&config.0);
    println!(
        "{} with {connection_string:?}: exit {code:?} after {:.1}s:\n{}",
        engine.database_type(),
        elapsed.as_secs_f64(),
        output.trim_end()
    );
    assert!(
        code.is_some_and(|c| c != 0),
        "spire-server must exit non-zero, got {code:?}:\n{output}"
    );
    let lower = output.to_lowercase();
    for want in expected {
        assert!(
            lower.contains(&want.to_lowercase()),
            "the message does not name the cause ({want:?}):\n{output}"
        );
    }
    assert!(
        elapsed < Duration::from_secs(90),
        "spire-server took {elapsed:?} to give up"
    );
    output
}

fn base_server(engine: Engine, test: &str) -> Option<Server> {
    let base = engine.base(test)?;
    Some(match engine {
        Engine::Postgres => parse_postgres(&base),
        _ => parse_mysql(&base),
    })
}

fn refuses_wrong_password(engine: Engine, expected: &[&str]) {
    let Some(mut server) = base_server(engine, "refuses_to_start_wrong_password") else {
        return;
    };
    server.password = "not-the-password".into();
    let dir = tempfile::tempdir().unwrap();
    let output = assert_refuses(
        engine,
        dir.path(),
        &server.connection_string(engine),
        expected,
    );
    assert!(
        !output.contains("not-the-password"),
        "the password was printed:\n{output}"
    );
}

#[test]
fn refuses_to_start_wrong_password_postgres() {
    refuses_wrong_password(Engine::Postgres, &["password authentication failed"]);
}

#[test]
fn refuses_to_start_wrong_password_mysql() {
    refuses_wrong_password(Engine::Mysql, &["access denied"]);
}

fn refuses_closed_port(engine: Engine) {
    let Some(mut server) = base_server(engine, "refuses_to_start_closed_port") else {
        return;
    };
    // A socket bound but never listening, held for the whole test: connecting to its port is
    // refused, and nothing else can take the port meanwhile.
    let closed = TcpSocket::new_v4().unwrap();
    closed.bind(([127, 0, 0, 1], 0).into()).unwrap();
    server.host = "127.0.0.1".into();
    server.port = closed.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    assert_refuses(
        engine,
        dir.path(),
        &server.connection_string(engine),
        &["cannot connect", "refused"],
    );
    drop(closed);
}

#[test]
fn refuses_to_start_closed_port_postgres() {
    refuses_closed_port(Engine::Postgres);
}

#[test]
fn refuses_to_start_closed_port_mysql() {
    refuses_closed_port(Engine::Mysql);
}

#[test]
fn refuses_to_start_connection_string_typo_postgres() {
    // A misspelt key and a misspelt value; no database is needed, the string is wrong
    // before any connection.
    let dir = tempfile::tempdir().unwrap();
    assert_refuses(
        Engine::Postgres,
        dir.path(),
        "dbname=spire usr=spire password=spire host=127.0.0.1 port=5432",
        &["connection_string", "\"usr\"", "did you mean \"user\""],
    );
    assert_refuses(
        Engine::Postgres,
        dir.path(),
        "dbname=spire user=spire password=spire host=127.0.0.1 port=5432 sslmode=disabel",
        &["connection_string", "sslmode=\"disabel\""],
    );
}

#[test]
fn refuses_to_start_connection_string_typo_mysql() {
    let dir = tempfile::tempdir().unwrap();
    assert_refuses(
        Engine::Mysql,
        dir.path(),
        "spire:spire@tpc(127.0.0.1:3306)/spire",
        &["connection_string", "protocol \"tpc\""],
    );
    // A misspelt parameter is taken for a session variable, which the server refuses.
    let Some(server) = base_server(Engine::Mysql, "refuses_to_start_connection_string_typo") else {
        return;
    };
    let dsn = format!(
        "{}:{}@tcp({}:{})/{}?parseTme=true",
        server.user, server.password, server.host, server.port, server.database
    );
    assert_refuses(
        Engine::Mysql,
        dir.path(),
        &dsn,
        &["connection_string", "parseTme"],
    );
}

/// Creates the schema with a first run, marks it one past SPIRE 1.15's (25), and requires the next
/// run to refuse it.
fn refuses_newer_schema(engine: Engine) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let Some(db) = TestDb::create(&runtime, engine, "newer_schema", dir.path()) else {
        return;
    };
    let (mut server, _) = start_first(dir.path(), engine.database_type(), &db.connection_string());
    server.stop();
    runtime.block_on(async {
        let pool = db.raw().await;
        execute(&pool, "UPDATE migrations SET version = 26").await;
        pool.close().await;
    });
    assert_refuses(
        engine,
        dir.path(),
        &db.connection_string(),
        &["schema version 26", "newer"],
    );
    db.remove(&runtime);
}

#[test]
fn refuses_to_start_newer_schema_sqlite() {
    refuses_newer_schema(Engine::Sqlite);
}

#[test]
fn refuses_to_start_newer_schema_postgres() {
    refuses_newer_schema(Engine::Postgres);
}

#[test]
fn refuses_to_start_newer_schema_mysql() {
    refuses_newer_schema(Engine::Mysql);
}

// ---------------------------------------------------------------------------------------
// The database goes away while the server runs, and comes back
// ---------------------------------------------------------------------------------------

/// A loopback TCP forwarder to a database that the test cuts (every open connection is
/// closed, new ones are accepted and closed at once) and restores.
struct Forwarder {
    port: u16,
    open: Arc<AtomicBool>,
    cuts: Arc<watch::Sender<u64>>,
}

impl Forwarder {
    async fn start(host: String, port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(true));
        let cuts = Arc::new(watch::channel(0u64).0);
        let accept_open = Arc::clone(&open);
        let accept_cuts = Arc::clone(&cuts);
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                // Subscribed before the check: a cut after the check still ends this relay.
                let mut cut = accept_cuts.subscribe();
                if !accept_open.load(Ordering::SeqCst) {
                    let _ = inbound.shutdown().await;
                    continue;
                }
                let target = (host.clone(), port);
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Self {
            port: local,
            open,
            cuts,
        }
    }

    /// The database "goes away": open connections drop, new ones are refused.
    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
    }

    /// The database is back.
    fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

/// The code and message of a one-entry create: the call's status, or the entry's.
async fn create_one(client: &mut EntryClient<Channel>, i: usize) -> (Code, String) {
    let request = BatchCreateEntryRequest {
        entries: vec![entry(i)],
        output_mask: None,
    };
    match client.batch_create_entry(request).await {
        Err(status) => (status.code(), status.message().to_owned()),
        Ok(response) => {
            let result = response.into_inner().results.into_iter().next().unwrap();
            let status = result.status.unwrap_or_default();
            if status.code == 0 {
                (Code::Ok, result.entry.map(|e| e.id).unwrap_or_default())
            } else {
                (Code::from_i32(status.code), status.message)
            }
        }
    }
}

fn database_outage(engine: Engine) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let Some(db) = TestDb::create(&runtime, engine, "outage", dir.path()) else {
        return;
    };
    let real = db.server.clone().unwrap();
    let forwarder = runtime.block_on(Forwarder::start(real.host.clone(), real.port));
    let mut through = real.clone();
    through.host = "127.0.0.1".into();
    through.port = forwarder.port;
    let (server, config) = start_first(
        dir.path(),
        engine.database_type(),
        &through.connection_string(engine),
    );

    let mut client = runtime.block_on(entry_client(&config.1));
    let mut created = HashMap::new();
    for i in 0..20 {
        let (code, id) = runtime.block_on(create_one(&mut client, i));
        assert_eq!(code, Code::Ok, "create {i} before the outage: {id}");
        created.insert(i, id);
    }

    forwarder.cut();
    // Long enough for the server's own periodic reads (cache refresh) to fail too.
    std::thread::sleep(Duration::from_secs(3));
    let outage = Instant::now();
    let (code, message) = runtime.block_on(create_one(&mut client, 100));
    let create_failed_after = outage.elapsed();
    assert_eq!(
        code,
        Code::Unavailable,
        "create while the database is away: {message}"
    );
    let list = Instant::now();
    let listed = runtime.block_on(client.list_entries(ListEntriesRequest::default()));
    let list_failed_after = list.elapsed();
    match listed {
        Err(status) => assert_eq!(status.code(), Code::Unavailable, "list: {status}"),
        Ok(r) => panic!(
            "ListEntries answered while the database is away ({} entries)",
            r.into_inner().entries.len()
        ),
    }

    forwarder.restore();
    let back = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let (code, id) = runtime.block_on(create_one(&mut client, 200));
        if code == Code::Ok {
            created.insert(200, id);
            break;
        }
        assert_eq!(
            code,
            Code::Unavailable,
            "create after the database came back: {id}"
        );
        assert!(
            back.elapsed() < Duration::from_secs(60),
            "still Unavailable {:?} after the database came back: {id}",
            back.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let recovered_after = back.elapsed();

    let (listed, raw) = runtime.block_on(async {
        let listed = list_all(&mut client).await;
        let pool = db.raw().await;
        let raw = RawCounts::read(&pool, engine).await;
        pool.close().await;
        (listed, raw)
    });
    let by_id: HashMap<&str, &Entry> = listed.iter().map(|e| (e.id.as_str(), e)).collect();
    for (i, id) in &created {
        let entry = by_id
            .get(id.as_str())
            .unwrap_or_else(|| panic!("entry {i} ({id}) was lost in the outage"));
        assert_eq!(
            entry.spiffe_id.as_ref().map(|s| s.path.as_str()),
            Some(spiffe_path(*i).as_str())
        );
    }
    assert_eq!(
        listed.len(),
        created.len(),
        "the create that failed with Unavailable must not have happened"
    );
    assert_eq!(raw.orphan_selectors, 0);
    assert_eq!(raw.entries_without_selectors, 0);
    assert!(
        server.cli(&["healthcheck"]).status.success(),
        "the server is not healthy after the outage:\n{}",
        server.log()
    );
    println!(
        "{}: create failed with Unavailable after {:.1}s, list after {:.1}s; first create \
         after the database came back succeeded after {:.1}s ({attempts} attempts); \
         {} entries kept",
        engine.database_type(),
        create_failed_after.as_secs_f64(),
        list_failed_after.as_secs_f64(),
        recovered_after.as_secs_f64(),
        listed.len()
    );
    drop(server);
    db.remove(&runtime);
}

#[test]
fn database_outage_postgres() {
    database_outage(Engine::Postgres);
}

#[test]
fn database_outage_mysql() {
    database_outage(Engine::Mysql);
}
