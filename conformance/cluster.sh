# Sourced by conformance/local-apiserver and scripts/bench: etcd and kube-apiserver
# 1.20.2 on loopback with generated certificates, token and client-certificate
# authentication, RBAC and an audit log.
#
# cluster_start DIR APISERVER_BINARY starts both, adds their pids to the caller's
# `pids` array (the caller stops them) and sets api_port and pki; then
# DIR holds admin.kubeconfig, tokens.csv (admin-token for user admin in
# system:masters), audit.log. k runs kubectl 1.32 as admin.

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

cluster_start() {
  local dir=$1 apiserver=$2
  command -v etcd >/dev/null || { echo "etcd missing: scripts/build-kube-apiserver installs etcd-server" >&2; return 1; }
  command -v openssl >/dev/null || { apt-get update -qq && apt-get install -y -qq openssl; }
  cluster_dir=$dir
  etcd_port=$(free_port); peer_port=$(free_port); api_port=$(free_port)

  # --- certificates
  pki="$dir/pki"; mkdir -p "$pki"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=kubetape-local-ca" \
    -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
  issue() { # name subject extensions
    openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$pki/$1.key" -out "$pki/$1.csr" 2>/dev/null
    printf '%s\n' "$3" > "$pki/$1.ext"
    openssl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
      -days 2 -extfile "$pki/$1.ext" -out "$pki/$1.crt" 2>/dev/null
  }
  issue apiserver "/CN=kube-apiserver" "subjectAltName=IP:127.0.0.1,DNS:localhost,IP:10.96.0.1,DNS:kubernetes.default.svc
extendedKeyUsage=serverAuth"
  issue kubelet "/CN=kubetape-sim" "subjectAltName=IP:127.0.0.1,DNS:localhost
extendedKeyUsage=serverAuth"
  issue apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "extendedKeyUsage=clientAuth"
  issue admin "/O=system:masters/CN=admin" "extendedKeyUsage=clientAuth"
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null

  b64() { base64 -w0 < "$1"; }
  cat > "$dir/admin.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority-data: $(b64 "$pki/ca.crt")
users:
- name: admin
  user:
    client-certificate-data: $(b64 "$pki/admin.crt")
    client-key-data: $(b64 "$pki/admin.key")
contexts:
- name: admin@local
  context:
    cluster: local
    user: admin
current-context: admin@local
EOF
  echo "$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n'),admin-token,admin,\"system:masters\"" > "$dir/tokens.csv"
  cat > "$dir/audit-policy.yaml" <<'EOF'
apiVersion: audit.k8s.io/v1
kind: Policy
rules:
- level: Metadata
EOF

  # --- etcd and kube-apiserver
  etcd --data-dir "$dir/etcd" --listen-client-urls "http://127.0.0.1:$etcd_port" \
    --advertise-client-urls "http://127.0.0.1:$etcd_port" --listen-peer-urls "http://127.0.0.1:$peer_port" \
    > "$dir/etcd.log" 2>&1 &
  pids+=($!)
  "$apiserver" --etcd-servers="http://127.0.0.1:$etcd_port" --bind-address=127.0.0.1 --secure-port="$api_port" \
    --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" --token-auth-file="$dir/tokens.csv" \
    --service-account-issuer=https://kubernetes.default.svc --service-account-key-file="$pki/sa.pub" \
    --service-account-signing-key-file="$pki/sa.key" --api-audiences=https://kubernetes.default.svc \
    --service-cluster-ip-range=10.96.0.0/24 --authorization-mode=RBAC \
    --disable-admission-plugins=ServiceAccount \
    --kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" --kubelet-client-key="$pki/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority="$pki/ca.crt" --kubelet-preferred-address-types=InternalIP \
    --audit-policy-file="$dir/audit-policy.yaml" --audit-log-path="$dir/audit.log" \
    > "$dir/apiserver.log" 2>&1 &
  pids+=($!)

  kubectl_bin="$(dirname "$(readlink -f "$(command -v kubectl)")")/kubectl.1.32"
  for i in $(seq 1 120); do
    if k get --raw /readyz >/dev/null 2>&1; then break; fi
    if [ "$i" = 120 ]; then echo "kube-apiserver not ready; its log:" >&2; tail -30 "$dir/apiserver.log" >&2; return 1; fi
    sleep 0.5
  done
  echo "kube-apiserver ready on 127.0.0.1:$api_port" >&2
}

k() { "$kubectl_bin" --kubeconfig "$cluster_dir/admin.kubeconfig" "$@"; }
