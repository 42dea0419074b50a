"""An AzCluster made with a name and TLS chosen beforehand (what a named cluster's head gets
from its caller): the pool carries that name, and a client that holds only the client's pair
and the CA connects and computes."""

from __future__ import annotations

import pytest
from distributed import Client
from distributed.security import Security

from azmanagers.cluster.core import AzCluster
from azmanagers.config.settings import resolve
from azmanagers.config.templates import load_template_scaleset, template_provider
from azmanagers.providers import get_provider
from azmanagers.tls import make_cluster_credentials

pytestmark = pytest.mark.integration
DEADLINE_S = 60.0


def test_a_cluster_with_a_given_name_and_tls_serves_a_client_holding_only_its_pair() -> None:
    template = load_template_scaleset("local")
    settings = resolve(
        {**template, "provider": template_provider(template)}, {}, template_name="local"
    )
    credentials = make_cluster_credentials("azm-study", ["127.0.0.1", "localhost"])
    cluster = AzCluster(
        "local",
        get_provider(settings.provider, template),
        settings,
        template=template,
        name="azm-study",
        credentials=credentials,
    )
    try:
        assert cluster.pool == cluster.name == "azm-study"
        assert cluster.credentials is credentials
        cluster.scale(1)
        cluster.wait_for_workers(1, timeout=DEADLINE_S)
        only_client = Security(
            tls_ca_file=credentials.ca,
            tls_client_cert=credentials.client.cert,
            tls_client_key=credentials.client.key,
            require_encryption=True,
        )
        with Client(cluster.scheduler_address, security=only_client, timeout=30) as client:
            assert client.submit(pow, 3, 4).result(timeout=30) == 81
    finally:
        cluster.close()
