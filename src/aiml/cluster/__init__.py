"""Running for a team on Ray Serve (``aiml serve --ray``): ``deploy.py`` joins the cluster and
deploys the model replicas, ``replica.py`` is a replica (the local engines with their own
pool), ``replica_client.py`` the front's side of it (an engine whose models run on the
replicas), ``changes.py`` the change feed between fronts, ``holdings.py`` which replica
holds which model. Above inference and the engines; the composition root (services) wires
it in.
"""
