# Any execution system without a snippet of its own.
export ALLTYPES_SITE=default
export ALLTYPES_HOME=/opt/alltypes
