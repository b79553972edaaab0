n=@@n@@
fail=@@fail@@
case " $fail " in
    *" $n "*) echo "$n is set to fail" >&2; exit 3 ;;
esac
sleep @@pause@@
echo $((n * n)) >square.txt
