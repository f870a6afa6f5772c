"""Filters naming wick replicas in the load balancer (deploy/ansible/roles/haproxy, and the
wick role's drain during a rollout): one HAProxy server per wick instance, named
<inventory_hostname>-<instance>."""


def wick_lb_server_name(host, instance):
    """The HAProxy server of instance `instance` of inventory host `host`."""
    return "%s-%s" % (host, instance)


def wick_lb_servers(group, groups, hostvars):
    """The servers of every host of `group`: [{name, address, port, ssl}], one per
    instance (the host's wick_lb_instances, default wick_gpus when a list, else [0]; port wick_port + instance)."""
    servers = []
    for host in groups.get(group, []):
        hv = hostvars[host]
        address = hv.get("wick_lb_address") or hv.get("ansible_host") or host
        base = int(hv.get("wick_port", 8000))
        ssl = bool(hv.get("wick_ssl_certfile"))
        gpus = hv.get("wick_gpus")
        instances = hv.get("wick_lb_instances") or (gpus if isinstance(gpus, list) else [0])
        for instance in instances:
            servers.append(
                {
                    "name": wick_lb_server_name(host, instance),
                    "address": address,
                    "port": base + int(instance),
                    "ssl": ssl,
                }
            )
    return servers


def wick_lb_metrics_url(server):
    """The /metrics URL of a server of wick_lb_servers, as the load balancer reaches it."""
    scheme = "https" if server.get("ssl") else "http"
    return "%s://%s:%s/metrics" % (scheme, server["address"], server["port"])


class FilterModule:
    """wick_lb_server_name, wick_lb_servers, wick_lb_metrics_url."""

    def filters(self):
        return {
            "wick_lb_server_name": wick_lb_server_name,
            "wick_lb_servers": wick_lb_servers,
            "wick_lb_metrics_url": wick_lb_metrics_url,
        }
