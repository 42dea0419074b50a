"""Configuration: AZMANAGERS_HOME paths and atomic 0600 writes, the manifest, the templates.

``paths`` (where files live, atomic writes, reading JSON), ``manifest``, ``templates`` (save,
load, list, remove), ``template_schema`` (shapes, validation, name rules), ``template_builders``
(build_sstemplate, build_vmtemplate, build_nictemplate) with the pieces they share in
``template_parts``, and ``settings`` (one resolver). config/ may import only
``azmanagers.errors`` and ``azmanagers._version``.
"""
