# Sourced by conformance/local-apiserver and scripts/bench: etcd and kube-apiserver
# 1.20.2 on loopback with generated certificates, token and client-certificate
# authentication, RBAC and an audit log; kube-controller-manager beside them when
# asked for.
#
# cluster_start DIR APISERVER_BINARY [ADDRESS] starts etcd and the apiserver, adds
# their pids to the caller's `pids` array (the caller stops them) and sets api_port,
# api_addr (ADDRESS:api_port) and pki. The apiserver binds ADDRESS (default
# 127.0.0.1) and is reached there by every kubeconfig; an ADDRESS other than loopback
# is also what it advertises in the `kubernetes` Endpoints, which refuse loopback
# addresses (without one it advertises the address of the default route, and fails
# to start where there is none, as in a fresh network namespace). Then DIR holds
# admin.kubeconfig, tokens.csv
# (admin-token for user admin in system:masters) and audit.log, and pki holds ca.crt
# and ca.key (the cluster CA), sa.key and sa.pub (service-account tokens), kubelet.crt
# and kubelet.key (a serving certificate for the node's kubelet).
#
# controller_manager_start CONTROLLER_MANAGER_BINARY, after cluster_start, starts
# kube-controller-manager against that apiserver, adds its pid to `pids`, sets cm_port,
# and returns once its /healthz answers ok. It logs to DIR/controller-manager.log.
#
# k runs kubectl 1.32 as admin.

# A free loopback port below the kernel's ephemeral range, so no outgoing connection
# can take it before the server given it binds (as kubetape's demo picks its ports).
free_port() {
  python3 -c '
import random, socket
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
for _ in range(64):
    port = random.randrange(low // 2, low)
    try:
        socket.socket().bind(("127.0.0.1", port))
        print(port)
        break
    except OSError:
        pass
else:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])
'
}

# alive PID: whether that child is still running. Not `kill -0`, which also succeeds
# for a child that exited and was not yet waited for.
alive() {
  local state
  state=$(sed -n 's/.*) \(.\).*/\1/p' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}

# stop_pid PID: SIGTERM, up to 20 s to exit, then SIGKILL; reaps it.
stop_pid() {
  kill "$1" 2>/dev/null || return 0
  for _ in $(seq 1 200); do alive "$1" || break; sleep 0.1; done
  kill -9 "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# issue NAME SUBJECT EXTENSIONS: a key and a certificate signed by the cluster CA, as
# $pki/NAME.key and $pki/NAME.crt.
issue() {
  openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$pki/$1.key" -out "$pki/$1.csr" 2>/dev/null
  printf '%s\n' "$3" > "$pki/$1.ext"
  openssl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 2 -extfile "$pki/$1.ext" -out "$pki/$1.crt" 2>/dev/null
}

# client_kubeconfig USER NAME: a kubeconfig for the apiserver, trusting the cluster CA,
# with $pki/NAME.crt and $pki/NAME.key as USER's client certificate.
client_kubeconfig() {
  cat <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://$api_addr
    certificate-authority-data: $(base64 -w0 < "$pki/ca.crt")
users:
- name: $1
  user:
    client-certificate-data: $(base64 -w0 < "$pki/$2.crt")
    client-key-data: $(base64 -w0 < "$pki/$2.key")
contexts:
- name: $1@local
  context:
    cluster: local
    user: $1
current-context: $1@local
EOF
}

cluster_start() {
  local dir=$1 apiserver=$2 ip=${3:-127.0.0.1} pid i
  command -v etcd >/dev/null || { echo "etcd missing: scripts/build-kube-control-plane installs etcd-server" >&2; return 1; }
  command -v openssl >/dev/null || { apt-get update -qq && apt-get install -y -qq openssl; }
  cluster_dir=$dir
  etcd_port=$(free_port); peer_port=$(free_port); api_port=$(free_port)
  api_addr="$ip:$api_port"
  local sans="IP:127.0.0.1,DNS:localhost,IP:10.96.0.1,DNS:kubernetes.default.svc" advertise=()
  if [ "$ip" != 127.0.0.1 ]; then sans="IP:$ip,$sans"; advertise=(--advertise-address="$ip"); fi

  # --- certificates
  pki="$dir/pki"; mkdir -p "$pki"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=kubetape-local-ca" \
    -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
  issue apiserver "/CN=kube-apiserver" "subjectAltName=$sans
extendedKeyUsage=serverAuth"
  issue kubelet "/CN=kubetape-sim" "subjectAltName=IP:127.0.0.1,DNS:localhost
extendedKeyUsage=serverAuth"
  issue apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "extendedKeyUsage=clientAuth"
  issue admin "/O=system:masters/CN=admin" "extendedKeyUsage=clientAuth"
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null

  client_kubeconfig admin admin > "$dir/admin.kubeconfig"
  echo "$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n'),admin-token,admin,\"system:masters\"" > "$dir/tokens.csv"
  cat > "$dir/audit-policy.yaml" <<'EOF'
apiVersion: audit.k8s.io/v1
kind: Policy
rules:
- level: Metadata
EOF

  # --- etcd and kube-apiserver. Owner references are checked as hardened clusters
  # do: whoever blocks an owner's deletion must be allowed to update its finalizers.
  etcd --data-dir "$dir/etcd" --listen-client-urls "http://127.0.0.1:$etcd_port" \
    --advertise-client-urls "http://127.0.0.1:$etcd_port" --listen-peer-urls "http://127.0.0.1:$peer_port" \
    > "$dir/etcd.log" 2>&1 &
  pids+=($!)
  "$apiserver" --etcd-servers="http://127.0.0.1:$etcd_port" --bind-address="$ip" "${advertise[@]}" --secure-port="$api_port" \
    --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" --token-auth-file="$dir/tokens.csv" \
    --service-account-issuer=https://kubernetes.default.svc --service-account-key-file="$pki/sa.pub" \
    --service-account-signing-key-file="$pki/sa.key" --api-audiences=https://kubernetes.default.svc \
    --service-cluster-ip-range=10.96.0.0/24 --authorization-mode=RBAC \
    --disable-admission-plugins=ServiceAccount --enable-admission-plugins=OwnerReferencesPermissionEnforcement \
    --kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" --kubelet-client-key="$pki/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority="$pki/ca.crt" --kubelet-preferred-address-types=InternalIP \
    --audit-policy-file="$dir/audit-policy.yaml" --audit-log-path="$dir/audit.log" \
    > "$dir/apiserver.log" 2>&1 &
  pid=$!
  pids+=("$pid")

  kubectl_bin="$(dirname "$(readlink -f "$(command -v kubectl)")")/kubectl.1.32"
  for i in $(seq 1 120); do
    if k get --raw /readyz >/dev/null 2>&1; then break; fi
    # An apiserver that exited will not become ready: say so now, not after a minute.
    if [ "$i" = 120 ] || ! alive "$pid"; then
      echo "kube-apiserver not ready; its log:" >&2; tail -30 "$dir/apiserver.log" >&2; return 1
    fi
    sleep 0.5
  done
  echo "kube-apiserver ready on $api_addr" >&2
}

k() { "$kubectl_bin" --kubeconfig "$cluster_dir/admin.kubeconfig" "$@"; }

controller_manager_start() {
  local cm=$1 dir=$cluster_dir pid i
  command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl; }
  cm_port=$(free_port)
  # Its identity: RBAC's bootstrap policy binds user system:kube-controller-manager;
  # with --use-service-account-credentials each controller then acts as its own
  # service account in kube-system.
  issue controller-manager "/CN=system:kube-controller-manager" "extendedKeyUsage=clientAuth"
  issue controller-manager-serving "/CN=kube-controller-manager" "subjectAltName=IP:127.0.0.1,DNS:localhost
extendedKeyUsage=serverAuth"
  client_kubeconfig system:kube-controller-manager controller-manager > "$dir/controller-manager.kubeconfig"
  # Its default flex-volume folder is under /usr/libexec, which it would create.
  mkdir -p "$dir/flexvolume"
  # --authentication-skip-lookup: otherwise it keeps reading the requestheader CA from
  # kube-system/extension-apiserver-authentication and logging errors. sa.key is the
  # key the apiserver signs and verifies service-account tokens with; the cluster CA
  # signs approved CSRs and is the root CA written into token secrets.
  "$cm" --kubeconfig="$dir/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$dir/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$dir/controller-manager.kubeconfig" \
    --authentication-skip-lookup=true --client-ca-file="$pki/ca.crt" \
    --bind-address=127.0.0.1 --secure-port="$cm_port" --port=0 \
    --tls-cert-file="$pki/controller-manager-serving.crt" --tls-private-key-file="$pki/controller-manager-serving.key" \
    --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
    --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
    --use-service-account-credentials=true --controllers='*' --leader-elect=false \
    --flex-volume-plugin-dir="$dir/flexvolume" \
    > "$dir/controller-manager.log" 2>&1 &
  pid=$!
  pids+=("$pid")

  # /healthz needs no credentials (--authorization-always-allow-paths' default).
  for i in $(seq 1 120); do
    if [ "$(curl -sS --max-time 2 --cacert "$pki/ca.crt" "https://127.0.0.1:$cm_port/healthz" 2>/dev/null)" = ok ]; then break; fi
    if [ "$i" = 120 ] || ! alive "$pid"; then
      echo "kube-controller-manager not healthy; its log:" >&2; tail -30 "$dir/controller-manager.log" >&2; return 1
    fi
    sleep 0.5
  done
  echo "kube-controller-manager healthy on 127.0.0.1:$cm_port" >&2
}
