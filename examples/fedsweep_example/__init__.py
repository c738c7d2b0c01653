"""A fedsweep plug-in package: a synthetic regression task, a partition by feature, a small
network and FedProx written as a plug-in, each named by ``_target_`` in this package's configs
(``fedsweep_example/configs/``), which join fedsweep's through Hydra's search path:

    fedsweep run hydra.searchpath=[pkg://fedsweep_example.configs] \\
        data=regression partition=by_feature model=two_layer loss=mse method=prox_plugin
"""
