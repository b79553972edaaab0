# Each value as one NUL-terminated record: what the application received, byte for byte.
printf '%s\0' @@count@@ @@ratio@@ @@title@@ @@note@@ @@code@@ @@verbose@@ @@mode@@ @@text@@ >values.bin
i=0
while [ "$i" -lt @@count@@ ]; do
    echo "line $i"
    i=$((i + 1))
done >results/lines.txt
if @@verbose@@; then
    echo "verbose mode"
fi
echo "site=$ALLTYPES_SITE home=$ALLTYPES_HOME"
wc -l <@@text@@ >results/text-lines.txt
