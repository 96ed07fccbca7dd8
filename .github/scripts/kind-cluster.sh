#!/usr/bin/env bash
# Used by .github/workflows/e2e-kind.yml only (GitHub runners: Docker, kind, kubectl, helm).
# kind-cluster.sh <index 1|2>: one kind cluster "mvpc<index>" with Kube-OVN, Multus, a VPC
# with NAT gateway gw1 on the shared docker network "kind", Submariner stand-ins (Cluster,
# ClusterGlobalEgressIP; no Submariner itself) and the kubeovn-multivpc chart.
set -euo pipefail
i=$1
name=mvpc$i
ctx=kind-$name
k() { kubectl --context "$ctx" "$@"; }
: "${KUBE_OVN_VERSION:?}" "${MULTUS_VERSION:?}" "${IMAGE_REGISTRY:?}" "${IMAGE_TAG:?}"

cat <<YAML | kind create cluster --name "$name" --config -
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
networking:
  disableDefaultCNI: true
  podSubnet: 10.$((15 + i)).0.0/16
  serviceSubnet: 10.$((95 + i)).0.0/16
nodes:
  - role: control-plane
YAML
k label node --all kube-ovn/role=master --overwrite

# Kube-OVN, with its own install script at the pinned release.
curl -fsSL "https://raw.githubusercontent.com/kubeovn/kube-ovn/${KUBE_OVN_VERSION}/dist/images/install.sh" -o /tmp/install-kube-ovn.sh
kubectl config use-context "$ctx"
# As root: the script also installs the kubectl-ko plugin into /usr/local/bin.
sudo -E env "PATH=$PATH" "KUBECONFIG=${KUBECONFIG:-$HOME/.kube/config}" \
  VERSION="$KUBE_OVN_VERSION" POD_CIDR=10.$((15 + i)).0.0/16 POD_GATEWAY=10.$((15 + i)).0.1 \
  SVC_CIDR=10.$((95 + i)).0.0/16 JOIN_CIDR=100.$((63 + i)).0.0/16 ENABLE_NAT_GW=true \
  bash /tmp/install-kube-ovn.sh
k -n kube-system rollout status deploy/kube-ovn-controller --timeout=5m

# Multus (the NAT gateway's external attachment).
k apply -f "https://raw.githubusercontent.com/k8snetworkplumbingwg/multus-cni/${MULTUS_VERSION}/deployments/multus-daemonset-thick.yml"
k -n kube-system rollout status ds/kube-multus-ds --timeout=5m

# The external network: macvlan on the node's eth0 (the docker network "kind", 172.30.0.0/16).
# Each cluster hands out its own slice: cluster 1 172.30.201.x, cluster 2 172.30.202.x.
cat <<YAML | k apply -f -
apiVersion: v1
kind: ConfigMap
metadata: {name: ovn-vpc-nat-config, namespace: kube-system}
data:
  image: docker.io/kubeovn/vpc-nat-gateway:${KUBE_OVN_VERSION}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: ovn-vpc-nat-gw-config, namespace: kube-system}
data:
  enable-vpc-nat-gw: "true"
---
apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata: {name: ovn-vpc-external-network, namespace: kube-system}
spec:
  config: '{"cniVersion":"0.3.0","type":"macvlan","master":"eth0","mode":"bridge","ipam":{"type":"kube-ovn","server_socket":"/run/openvswitch/kube-ovn-daemon.sock","provider":"ovn-vpc-external-network.kube-system"}}'
---
apiVersion: kubeovn.io/v1
kind: Subnet
metadata: {name: ovn-vpc-external-network}
spec:
  protocol: IPv4
  provider: ovn-vpc-external-network.kube-system
  cidrBlock: 172.30.0.0/16
  gateway: 172.30.0.1
  excludeIps: ["172.30.0.1..172.30.$((200 + i - 1)).255", "172.30.$((200 + i + 1)).0..172.30.255.254"]
---
apiVersion: kubeovn.io/v1
kind: Vpc
metadata: {name: vpc1}
spec:
  staticRoutes:
    - {cidr: 0.0.0.0/0, nextHopIP: 10.0.$i.254, policy: policyDst}
---
apiVersion: kubeovn.io/v1
kind: Subnet
metadata: {name: vpc1-net}
spec:
  vpc: vpc1
  protocol: IPv4
  cidrBlock: 10.0.$i.0/24
  gateway: 10.0.$i.1
  excludeIps: ["10.0.$i.254"]
---
apiVersion: kubeovn.io/v1
kind: VpcNatGateway
metadata: {name: gw1}
spec:
  vpc: vpc1
  subnet: vpc1-net
  lanIp: 10.0.$i.254
  externalSubnets: [ovn-vpc-external-network]
YAML
k -n kube-system rollout status statefulset/vpc-nat-gw-gw1 --timeout=5m

# Submariner stand-ins: its CRDs (the harness's fixtures), this cluster's Globalnet CIDR and
# egress IPs, as Submariner's own controllers would publish them.
k apply -f e2e/fixtures/crds/submariner.io.yaml
k create namespace submariner-operator --dry-run=client -o yaml | k apply -f -
k wait --for condition=Established crd/clusters.submariner.io crd/clusterglobalegressips.submariner.io --timeout=60s
cat <<YAML | k apply -f -
apiVersion: submariner.io/v1
kind: Cluster
metadata: {name: cluster$i, namespace: submariner-operator}
spec:
  cluster_id: cluster$i
  global_cidr: ["242.$((i - 1)).0.0/16"]
  cluster_cidr: ["10.$((15 + i)).0.0/16"]
  service_cidr: ["10.$((95 + i)).0.0/16"]
  color_codes: [blue]
---
apiVersion: submariner.io/v1
kind: ClusterGlobalEgressIP
metadata: {name: cluster-egress.submariner.io}
spec: {numGlobalIPs: 8}
YAML
k patch clusterglobalegressip cluster-egress.submariner.io --subresource=status --type=merge \
  -p "{\"status\":{\"allocatedIPs\":[\"242.$((i - 1)).255.1\",\"242.$((i - 1)).255.2\",\"242.$((i - 1)).255.3\",\"242.$((i - 1)).255.4\",\"242.$((i - 1)).255.5\",\"242.$((i - 1)).255.6\",\"242.$((i - 1)).255.7\",\"242.$((i - 1)).255.8\"]}}"

# The chart, with the images built by this workflow (no broker: the workflow copies the
# GatewayExIps between the clusters, standing in for the broker).
for c in dns-forwarder tunnel-manager exip-syncer; do
  kind load docker-image --name "$name" "$IMAGE_REGISTRY/$c:$IMAGE_TAG"
done
helm --kube-context "$ctx" install multivpc charts/kubeovn-multivpc \
  --namespace multi-vpc-system --create-namespace \
  --set global.clusterId=cluster$i \
  --set global.image.registry="$IMAGE_REGISTRY" --set global.image.tag="$IMAGE_TAG" \
  --set global.image.pullPolicy=Never \
  --set global.broker.credentials=none \
  --wait --timeout 5m
