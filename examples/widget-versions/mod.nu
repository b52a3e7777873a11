# A conversion webhook: the CRD `widgets.examples.nuop.dev` (crd.yaml) serves v1 and
# v2 and stores v1; the API server asks this script whenever it must turn one into the
# other (a v2 read of a stored v1 object, a v2 write).
#   v1: spec.size is a number of centimetres          spec: {size: 30}
#   v2: spec.size is a quantity with its unit           spec: {size: {value: 30, unit: cm}}
# Webhook-only: no `main reconcile`.

def "main config" [] {
  {
    name: "widget-versions"
    group: "examples.nuop.dev"
    version: "v1"
    kind: "Widget"
    conversion: { crd: "widgets.examples.nuop.dev" }
  }
}

# Input: {desiredAPIVersion, objects}; answer: the objects in desiredAPIVersion, in the
# same order, with the same metadata (labels and annotations may change).
def "main convert" [] {
  let request = $in | from json
  let to = $request.desiredAPIVersion
  $request.objects | each {|widget| convert $widget $to }
}

def convert [widget: record, to: string] {
  if $widget.apiVersion == $to { return $widget }
  let spec = $widget.spec? | default {}
  if ($to | str ends-with "/v2") {
    let size = $spec.size? | default 0
    $widget | upsert apiVersion $to | upsert spec ($spec | upsert size { value: $size, unit: "cm" })
  } else {
    let size = $spec.size? | default { value: 0, unit: "cm" }
    let cm = if $size.unit? == "m" { $size.value * 100 } else { $size.value }
    $widget | upsert apiVersion $to | upsert spec ($spec | upsert size $cm)
  }
}
