#!/usr/bin/env bash
# Makes PostgreSQL and MariaDB available on loopback for the SQL datastore tests.
#
# Installs `postgresql` and `mariadb-server` from Debian's packages when they are missing,
# starts PostgreSQL on 127.0.0.1:5432 and MariaDB on 127.0.0.1:3306 (without systemd, so it
# works in containers), and creates the user `spire` (password `spire`, allowed to create
# databases, which the tests do, one per test, and a member of pg_signal_backend so that
# `DROP DATABASE ... WITH (FORCE)` can end an autovacuum worker) and the databases `spire` and
# `spire_upstream`.
# Idempotent: a second run only checks that both servers answer.
#
# Prints the variables the tests read, as `export` lines on standard output (progress goes to
# standard error), and writes the same lines to target/test-databases.env:
#
#   eval "$(scripts/test-databases.sh)"        # or: scripts/test-databases.sh && . target/test-databases.env
#   cargo test -p spire-server --test datastore_sql
#
# Runs as root (CI) or as a user with sudo (a developer's machine). Exits non-zero with the
# reason when a server cannot be installed or started.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_PORT=5432
MYSQL_PORT=3306
DB_USER=spire
DB_PASSWORD=spire
DATABASES=(spire spire_upstream)

log() { printf 'test-databases: %s\n' "$*" >&2; }
die() {
    printf 'test-databases: error: %s\n' "$*" >&2
    exit 1
}

# Runs a command as root: directly when we are root, else through sudo.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root for '$*': run as root or install sudo"
    fi
}

# Runs a command as the postgres system user.
as_postgres() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -u postgres "$@"
    else
        die "need root or sudo to run '$*' as the postgres user"
    fi
}

# Waits up to $2 seconds for command $1 (a shell snippet) to succeed.
wait_for() {
    local check=$1 seconds=$2 what=$3
    for _ in $(seq "$seconds"); do
        if eval "$check" >/dev/null 2>&1; then
            return 0
        fi
        sleep 1
    done
    die "$what did not accept connections within ${seconds}s"
}

pg_bin_dir() {
    # Debian installs each major version under /usr/lib/postgresql/<major>/bin; take the newest.
    local dir
    dir=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null |
        sort -V | tail -n 1)
    if [ -n "$dir" ] && [ -x "$dir/postgres" ]; then
        echo "$dir"
    fi
}

mariadb_server_bin() {
    local candidate
    for candidate in /usr/sbin/mariadbd /usr/sbin/mysqld; do
        if [ -x "$candidate" ]; then
            echo "$candidate"
            return
        fi
    done
}

install_missing() {
    local packages=()
    if [ -z "$(pg_bin_dir)" ] || ! command -v pg_ctlcluster >/dev/null 2>&1; then
        packages+=(postgresql)
    fi
    if [ -z "$(mariadb_server_bin)" ] || ! command -v mariadb >/dev/null 2>&1; then
        packages+=(mariadb-server)
    fi
    if [ ${#packages[@]} -eq 0 ]; then
        log "postgresql and mariadb-server are installed"
        return
    fi
    command -v apt-get >/dev/null 2>&1 ||
        die "${packages[*]} missing and apt-get not found: install them with your package manager"
    log "installing ${packages[*]} from Debian's packages"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 ||
        die "apt-get update failed; check the network and /etc/apt/sources.list"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${packages[@]}" >&2 ||
        die "apt-get install ${packages[*]} failed (see above)"
    [ -n "$(pg_bin_dir)" ] || die "postgresql installed but no /usr/lib/postgresql/*/bin/postgres"
    [ -n "$(mariadb_server_bin)" ] || die "mariadb-server installed but no mariadbd"
}

start_postgres() {
    if pg_isready -q -h 127.0.0.1 -p "$PG_PORT" 2>/dev/null; then
        log "PostgreSQL already answers on 127.0.0.1:$PG_PORT"
        return
    fi
    local version
    version=$(basename "$(dirname "$(pg_bin_dir)")")
    if ! pg_lsclusters -h 2>/dev/null | awk '{print $1, $2}' | grep -qx "$version main"; then
        log "creating PostgreSQL $version cluster 'main'"
        as_root pg_createcluster "$version" main --port "$PG_PORT" >&2
    fi
    log "starting PostgreSQL $version on 127.0.0.1:$PG_PORT"
    as_root pg_ctlcluster "$version" main start >&2 ||
        die "pg_ctlcluster $version main start failed; see /var/log/postgresql/postgresql-$version-main.log"
    wait_for "pg_isready -q -h 127.0.0.1 -p $PG_PORT" 60 "PostgreSQL on 127.0.0.1:$PG_PORT"
}

setup_postgres() {
    local psql=(psql -X -q -v ON_ERROR_STOP=1 -p "$PG_PORT" -d postgres)
    as_postgres "${psql[@]}" >&2 <<SQL
DO \$\$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$DB_USER') THEN
        CREATE ROLE $DB_USER LOGIN;
    END IF;
END
\$\$;
ALTER ROLE $DB_USER WITH LOGIN CREATEDB PASSWORD '$DB_PASSWORD';
-- DROP DATABASE ... WITH (FORCE) terminates the sessions on the database, autovacuum workers
-- included; those belong to no role, so only pg_signal_backend lets the tests' role end them.
DO \$\$
BEGIN
    IF NOT pg_has_role('$DB_USER', 'pg_signal_backend', 'MEMBER') THEN
        GRANT pg_signal_backend TO $DB_USER;
    END IF;
END
\$\$;
SQL
    local db
    for db in "${DATABASES[@]}"; do
        if [ "$(as_postgres "${psql[@]}" -tA -c "SELECT 1 FROM pg_database WHERE datname = '$db'")" != 1 ]; then
            as_postgres "${psql[@]}" -c "CREATE DATABASE $db OWNER $DB_USER" >&2
        fi
    done
    PGPASSWORD=$DB_PASSWORD psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" -d spire \
        -c 'SELECT 1' >/dev/null ||
        die "cannot log in to PostgreSQL as $DB_USER over 127.0.0.1 (check pg_hba.conf)"
}

mariadb_client() {
    if command -v mariadb >/dev/null 2>&1; then echo mariadb; else echo mysql; fi
}

start_mariadb() {
    local client
    client=$(mariadb_client)
    if mariadb-admin --protocol=tcp -h 127.0.0.1 -P "$MYSQL_PORT" ping >/dev/null 2>&1 ||
        mysqladmin --protocol=tcp -h 127.0.0.1 -P "$MYSQL_PORT" ping >/dev/null 2>&1; then
        log "MariaDB already answers on 127.0.0.1:$MYSQL_PORT"
        return
    fi
    log "starting MariaDB on 127.0.0.1:$MYSQL_PORT"
    if ! as_root service mariadb start >&2 2>&1; then
        log "'service mariadb start' failed; starting mysqld_safe in the background"
        as_root mkdir -p /run/mysqld
        as_root chown mysql:mysql /run/mysqld
        as_root sh -c "nohup mysqld_safe --bind-address=127.0.0.1 --port=$MYSQL_PORT \
            >/var/log/mysqld_safe.log 2>&1 &"
    fi
    wait_for "as_root $client --protocol=socket -uroot -e 'SELECT 1'" 60 "MariaDB"
}

setup_mariadb() {
    local client
    client=$(mariadb_client)
    local sql="
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASSWORD';
CREATE USER IF NOT EXISTS '$DB_USER'@'%' IDENTIFIED BY '$DB_PASSWORD';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
ALTER USER '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASSWORD';
ALTER USER '$DB_USER'@'%' IDENTIFIED BY '$DB_PASSWORD';
GRANT ALL PRIVILEGES ON \`spire%\`.* TO '$DB_USER'@'localhost';
GRANT ALL PRIVILEGES ON \`spire%\`.* TO '$DB_USER'@'127.0.0.1';
GRANT ALL PRIVILEGES ON \`spire%\`.* TO '$DB_USER'@'%';
"
    local db
    for db in "${DATABASES[@]}"; do
        sql+="CREATE DATABASE IF NOT EXISTS \`$db\` CHARACTER SET utf8mb4;"
    done
    sql+="FLUSH PRIVILEGES;"
    as_root "$client" --protocol=socket -uroot -e "$sql" >&2 ||
        die "cannot create the MariaDB user and databases as root (unix socket authentication)"
    "$client" --protocol=tcp -h 127.0.0.1 -P "$MYSQL_PORT" -u "$DB_USER" -p"$DB_PASSWORD" spire \
        -e 'SELECT 1' >/dev/null ||
        die "cannot log in to MariaDB as $DB_USER over 127.0.0.1:$MYSQL_PORT"
}

start=$(date +%s)
install_missing
start_postgres
setup_postgres
start_mariadb
setup_mariadb

mkdir -p target
env_file=target/test-databases.env
{
    echo "export SPIRE_TEST_POSTGRES='dbname=spire user=$DB_USER password=$DB_PASSWORD host=127.0.0.1 port=$PG_PORT sslmode=disable'"
    echo "export SPIRE_TEST_MYSQL='$DB_USER:$DB_PASSWORD@tcp(127.0.0.1:$MYSQL_PORT)/spire?parseTime=true'"
} >"$env_file"
log "PostgreSQL and MariaDB ready in $(($(date +%s) - start))s; variables in $env_file"
cat "$env_file"
