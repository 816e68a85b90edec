#!/usr/bin/env bash
# Starts a single-node Garage S3 server on 127.0.0.1 in DIR, with one bucket and one key, for
# the S3 tests and for trying agentctl against a real S3 server.
#
#   tests/garage/setup.sh [DIR]        # DIR defaults to a new temp directory
#   . DIR/env                          # HOSTAGENT_TEST_S3_* variables (holds the secret key)
#   kill "$(cat DIR/garage.pid)"       # stop it
#
# Settings (environment): GARAGE_BIN (default: garage on PATH, then ~/.cargo/bin/garage;
# install with `cargo install --locked garage`), GARAGE_S3_PORT (3900), GARAGE_RPC_PORT
# (3901), GARAGE_BUCKET (hostagent-test), HOSTAGENT_GARAGE_WATCH_PID (stop the server when
# that process exits, so test runs leave nothing behind; with HOSTAGENT_GARAGE_REMOVE_DIR=1
# also remove DIR then).
#
# Writes DIR/garage.toml, DIR/garage.pid, DIR/garage.log, DIR/env (variables for the tests)
# and DIR/credentials (an AWS credentials file for --s3-credentials-file). Prints the
# endpoint, bucket and key ID; the secret key goes only into the two files (mode 600).
set -euo pipefail

dir=${1:-$(mktemp -d /tmp/hostagent-garage.XXXXXX)}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
s3_port=${GARAGE_S3_PORT:-3900}
rpc_port=${GARAGE_RPC_PORT:-3901}
bucket=${GARAGE_BUCKET:-hostagent-test}

garage=${GARAGE_BIN:-}
if [[ -z $garage ]]; then
    garage=$(command -v garage || true)
    [[ -z $garage && -x $HOME/.cargo/bin/garage ]] && garage=$HOME/.cargo/bin/garage
fi
if [[ -z $garage || ! -x $garage ]]; then
    echo "setup.sh: no garage binary: install it with 'cargo install --locked garage' or set GARAGE_BIN" >&2
    exit 2
fi

umask 077
cat >"$dir/garage.toml" <<EOF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3_port"
root_domain = ".s3.garage.localhost"
EOF

g() { "$garage" -c "$dir/garage.toml" "$@"; }

# Started directly (not through g) so that $! is the server's own pid.
"$garage" -c "$dir/garage.toml" server >>"$dir/garage.log" 2>&1 &
echo $! >"$dir/garage.pid"

if [[ -n ${HOSTAGENT_GARAGE_WATCH_PID:-} ]]; then
    # Reads the pid file when it fires, so a server restarted by a test is stopped too.
    (
        while kill -0 "$HOSTAGENT_GARAGE_WATCH_PID" 2>/dev/null; do sleep 1; done
        kill "$(cat "$dir/garage.pid")" 2>/dev/null || true
        if [[ ${HOSTAGENT_GARAGE_REMOVE_DIR:-} == 1 ]]; then
            sleep 1
            rm -rf "$dir"
        fi
    ) </dev/null >/dev/null 2>&1 &
fi

for _ in $(seq 100); do
    g status >/dev/null 2>&1 && break
    sleep 0.1
done
node=$(g node id -q 2>/dev/null)
node=${node%%@*}
g layout assign -z dc1 -c 1G "$node" >/dev/null
g layout apply --version 1 >/dev/null
g bucket create "$bucket" >/dev/null
key_info=$(g key create hostagent-test-key)
key_id=$(awk -F': *' '/Key ID/ {print $2; exit}' <<<"$key_info")
secret=$(awk -F': *' '/Secret key/ {print $2; exit}' <<<"$key_info")
if [[ -z $key_id || -z $secret ]]; then
    echo "setup.sh: could not read the new key from 'garage key create'" >&2
    exit 1
fi
g bucket allow --read --write --owner "$bucket" --key hostagent-test-key >/dev/null

cat >"$dir/env" <<EOF
export HOSTAGENT_TEST_S3_ENDPOINT=http://127.0.0.1:$s3_port
export HOSTAGENT_TEST_S3_REGION=garage
export HOSTAGENT_TEST_S3_BUCKET=$bucket
export HOSTAGENT_TEST_S3_ACCESS_KEY=$key_id
export HOSTAGENT_TEST_S3_SECRET_KEY=$secret
export HOSTAGENT_TEST_GARAGE_DIR=$dir
EOF
cat >"$dir/credentials" <<EOF
[default]
aws_access_key_id=$key_id
aws_secret_access_key=$secret
EOF

echo "garage: endpoint http://127.0.0.1:$s3_port region garage bucket $bucket key $key_id"
echo "garage: dir $dir (source $dir/env; credentials file $dir/credentials; stop with kill \$(cat $dir/garage.pid))"
