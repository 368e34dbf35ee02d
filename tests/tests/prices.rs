//! Prices from AWS (`jitr_aws::pricing`): on-demand from the Price List
//! Query API — a stand-in HTTP server that checks the `GetProducts` request
//! as the API reference documents it (JSON 1.1, target
//! `AWSPriceListService.GetProducts`, `TERM_MATCH` filters) and answers
//! products shaped as it documents them (`PriceList`: JSON documents as
//! strings) — and spot from EC2's `DescribeSpotPriceHistory` on moto.

use jitr_aws::AwsSettings;
use jitr_aws::pricing::{AwsPrices, hourly_on_demand};
use jitr_e2e::aws;
use serde_json::{Value, json};
use wiremock::matchers::{header, method};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

/// A Price List product of `instance_type`: an on-demand hourly rate of
/// `usd`, and a reserved term the reader must leave alone.
fn product(instance_type: &str, usd: &str) -> String {
    json!({
        "product": {
            "productFamily": "Compute Instance",
            "attributes": {
                "instanceType": instance_type,
                "regionCode": "us-east-1",
                "operatingSystem": "Linux",
                "tenancy": "Shared",
                "preInstalledSw": "NA",
                "capacitystatus": "Used"
            },
            "sku": "SKU1"
        },
        "serviceCode": "AmazonEC2",
        "terms": {
            "OnDemand": {
                "SKU1.JRTCKXETXF": {
                    "priceDimensions": {
                        "SKU1.JRTCKXETXF.6YS6EN2CT7": {
                            "unit": "Hrs",
                            "endRange": "Inf",
                            "beginRange": "0",
                            "description": "On Demand Linux instance hour",
                            "rateCode": "SKU1.JRTCKXETXF.6YS6EN2CT7",
                            "appliesTo": [],
                            "pricePerUnit": { "USD": usd }
                        }
                    },
                    "sku": "SKU1",
                    "effectiveDate": "2026-11-01T00:00:00Z",
                    "offerTermCode": "JRTCKXETXF",
                    "termAttributes": {}
                }
            },
            "Reserved": {
                "SKU1.4NA7Y494T4": {
                    "priceDimensions": {
                        "SKU1.4NA7Y494T4.6YS6EN2CT7": {
                            "unit": "Hrs",
                            "pricePerUnit": { "USD": "0.0400000000" }
                        }
                    }
                }
            }
        },
        "version": "20261101000000",
        "publicationDate": "2026-11-01T00:00:00Z"
    })
    .to_string()
}

/// The value of the `TERM_MATCH` filter on `field` in a `GetProducts` body.
fn filter(body: &Value, field: &str) -> Option<String> {
    body["Filters"].as_array()?.iter().find_map(|f| {
        (f["Field"] == field && f["Type"] == "TERM_MATCH")
            .then(|| f["Value"].as_str().map(str::to_owned))
            .flatten()
    })
}

#[tokio::test]
async fn on_demand_from_the_price_list_and_spot_from_the_price_history() {
    let price_list = MockServer::start().await;
    Mock::given(method("POST"))
        .and(header("x-amz-target", "AWSPriceListService.GetProducts"))
        .and(header("content-type", "application/x-amz-json-1.1"))
        .respond_with(|request: &Request| {
            let body: Value = serde_json::from_slice(&request.body).unwrap();
            let wanted = [
                ("regionCode", "us-east-1"),
                ("operatingSystem", "Linux"),
                ("tenancy", "Shared"),
                ("preInstalledSw", "NA"),
                ("capacitystatus", "Used"),
            ];
            let documented = body["ServiceCode"] == "AmazonEC2"
                && body["FormatVersion"] == "aws_v1"
                && wanted
                    .iter()
                    .all(|(field, value)| filter(&body, field).as_deref() == Some(value));
            if !documented {
                return ResponseTemplate::new(400).set_body_json(json!({
                    "__type": "InvalidParameterException",
                    "Message": format!("not the request jitr should send: {body}")
                }));
            }
            let products = match filter(&body, "instanceType").as_deref() {
                Some("c5.xlarge") => vec![product("c5.xlarge", "0.1700000000")],
                _ => vec![],
            };
            ResponseTemplate::new(200)
                .insert_header("content-type", "application/x-amz-json-1.1")
                .set_body_json(json!({ "FormatVersion": "aws_v1", "PriceList": products }))
        })
        .mount(&price_list)
        .await;
    let pricing = AwsSettings::emulator(price_list.uri()).load().await;
    let ec2 = aws::config().await;
    let prices = AwsPrices::with(&pricing, &ec2);
    assert_eq!(prices.region(), "us-east-1");

    assert_eq!(prices.on_demand("c5.xlarge").await.unwrap(), Some(0.17));
    assert_eq!(prices.on_demand("x9.nothing").await.unwrap(), None);
    assert_eq!(price_list.received_requests().await.unwrap().len(), 2);

    // moto answers each zone that offers the type at its canned price.
    let now = aws_smithy_types::DateTime::from_secs(1_796_000_000);
    let spot = prices.spot("c5.xlarge", now).await.unwrap();
    assert_eq!(spot, Some(0.00001));

    // The reader takes the on-demand hourly rate, not the reserved one, and
    // refuses a product that is not as documented.
    assert_eq!(
        hourly_on_demand(&product("m5.large", "0.0960000000")).unwrap(),
        vec![0.096]
    );
    assert!(hourly_on_demand("{\"terms\":{\"OnDemand\":{\"X\":{}}}}").is_err());
    assert!(hourly_on_demand(&product("m5.large", "cheap")).is_err());
}
