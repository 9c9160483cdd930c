#!/usr/bin/env bash
# Offline validation of infra/ (run by `make lint`, so by `make test`): no cluster, no cloud account.
#   1. render each kustomize overlay (`kubectl kustomize`, kubectl's built-in kustomize);
#   2. check every rendered manifest, the profiles and the Secret templates against the Kubernetes
#      OpenAPI schemas, strictly (kubernetes-validate; the Kubeflow Profile is a CRD it has no schema
#      for: tests/test_infra.py checks its fields);
#   3. scan the rendered manifests and the Terraform with Checkov: any failed check fails (the accepted
#      ones are skipped in the resource itself, with the reason).
# There is no terraform binary here (neither Debian nor PyPI ships a current one, and `terraform validate`
# needs the provider from registry.terraform.io); tests/test_infra.py parses the Terraform instead.
set -euo pipefail
cd "$(dirname "$0")"
CHECKOV=${CHECKOV:-checkov}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for overlay in k8s/overlays/*/; do
  name=$(basename "$overlay")
  kubectl kustomize "$overlay" > "$out/$name.yaml"
done
cp k8s/profiles.yaml k8s/secrets/*.template.yaml "$out/"
kubernetes-validate --strict --quiet --no-warn "$out"/*.yaml
"$CHECKOV" --quiet --compact --skip-download --framework kubernetes -d "$out"
"$CHECKOV" --quiet --compact --skip-download --framework terraform -d terraform
echo "infra/: $(ls k8s/overlays | wc -l) overlays rendered, kubernetes-validate and Checkov passed"
