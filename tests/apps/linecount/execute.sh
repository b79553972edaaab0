wc -l <@@text@@ >count.txt
cat @@text@@ >>count.txt
