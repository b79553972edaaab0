# The Local execution system: where the application lives on this host.
export ALLTYPES_SITE=local
export ALLTYPES_HOME=/srv/alltypes
export PATH="$PATH:$ALLTYPES_HOME/bin"
echo "environment of @@APP_NAME@@ on @@SYSTEM@@"
